//! Verify + parse of a text push, beside plain quick-xml parsing of the same
//! body. `cargo bench -p pubbot-webhook --bench verify_parse`; under
//! `cargo test` it runs a few iterations as a smoke test.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pubbot_webhook::{parse, PushParams, Verifier};
use quick_xml::events::Event;
use quick_xml::Reader;
use secrecy::SecretString;
use sha1::{Digest, Sha1};

const BODY: &str = "<xml>\n <ToUserName><![CDATA[shop]]></ToUserName>\n <FromUserName><![CDATA[alice]]></FromUserName>\n <CreateTime>1764115200000</CreateTime>\n <MsgType><![CDATA[text]]></MsgType>\n <Content><![CDATA[hello, what are your opening hours?]]></Content>\n <MsgId>1764115200000123</MsgID>\n</xml>";

fn plain_quick_xml(body: &[u8]) -> usize {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_end_names = false;
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => n += 1,
        }
        buf.clear();
    }
    n
}

/// Runs `f` for about `budget`, five times, and returns the median rate.
fn rate(budget: Duration, mut f: impl FnMut(u64)) -> f64 {
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut i = 0u64;
        while start.elapsed() < budget {
            for _ in 0..256 {
                f(i);
                i += 1;
            }
        }
        rates.push(i as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates[2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let budget = if bench {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(5)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let secret = "s3cret";
    // A replay memory big enough not to evict during the run; each push has
    // its own nonce, as real pushes do.
    let verifier = Verifier::new(
        HashMap::from([("app".to_owned(), vec![SecretString::from(secret)])]),
        Duration::from_secs(300),
        1 << 24,
    );
    let ts = now.to_string();

    let plain = rate(budget, |_| {
        black_box(plain_quick_xml(black_box(BODY.as_bytes())));
    });
    let parse_only = rate(budget, |_| {
        black_box(parse(black_box(BODY.as_bytes())).unwrap());
    });
    // Signed queries made up front, so only the receiving side is timed.
    let sign = |nonce: &str| {
        let mut h = Sha1::new();
        h.update(format!("{secret}{nonce}{ts}").as_bytes());
        let signature: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("rc-nonce={nonce}&rc-timestamp={ts}&rc-signature={signature}")
    };
    // The replay memory holds 100k earlier pushes, as a busy instance would.
    for i in 0..100_000 {
        let q = sign(&format!("old{i}"));
        let ok = verifier
            .verify("app", &PushParams::from_query(Some(&q)).unwrap(), now)
            .unwrap();
        verifier.remember(ok, now);
    }
    let queries: Vec<String> = (0..4096).map(|i| sign(&i.to_string())).collect();
    let full = rate(budget, |i| {
        let query = &queries[(i % 4096) as usize];
        let params = PushParams::from_query(Some(query)).unwrap();
        let ok = verifier.verify("app", &params, now).unwrap();
        let msg = parse(BODY.as_bytes()).unwrap();
        black_box((ok, msg));
    });
    println!("plain quick-xml events, same body : {plain:>12.0} msgs/s (baseline)");
    println!(
        "pubbot parse                      : {parse_only:>12.0} msgs/s ({:.2}x baseline)",
        parse_only / plain
    );
    println!(
        "query + verify + parse             : {full:>12.0} msgs/s ({:.2}x baseline)",
        full / plain
    );
}
