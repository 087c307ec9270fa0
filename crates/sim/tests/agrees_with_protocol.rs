//! The simulator's own reading of the protocol's facts and pubbot's
//! (`pubbot-protocol`) answer one table of cases alike. They are two
//! implementations on purpose (see the crate docs); this keeps them honest.

use pubbot_sim::limits as sim;

fn amr(frame_type: u8, frames: usize) -> Vec<u8> {
    let size = [12, 13, 15, 17, 19, 20, 26, 31, 5, 0, 0, 0, 0, 0, 0, 0][usize::from(frame_type)];
    let mut f = b"#!AMR\n".to_vec();
    for _ in 0..frames {
        f.push(frame_type << 3);
        f.extend(std::iter::repeat_n(0u8, size));
    }
    f
}

#[test]
fn limits_are_the_same_numbers() {
    use pubbot_protocol::limits as p;
    assert_eq!(sim::TEXT_MAX_BYTES, p::TEXT_MAX_BYTES);
    assert_eq!(sim::ARTICLES_MAX, p::ARTICLES_MAX);
    assert_eq!(sim::DESCRIPTION_MAX_WIDTH, p::DESCRIPTION_MAX_WIDTH);
    assert_eq!(sim::MENU_NAME_MAX_CHARS, p::MENU_NAME_MAX_CHARS);
    assert_eq!(sim::BATCH_MAX_USERS, p::BATCH_MAX_USERS);
    assert_eq!(sim::SUBSCRIBE_MAX_USERS, p::SUBSCRIBE_MAX_USERS);
    assert_eq!(sim::IMAGE_MAX_BYTES, p::IMAGE_MAX_BYTES);
    assert_eq!(sim::THUMB_MAX_BYTES, p::THUMB_MAX_BYTES);
    assert_eq!(sim::VOICE_MAX_BYTES, p::VOICE_MAX_BYTES);
    assert_eq!(sim::VOICE_MAX_MILLIS, p::VOICE_MAX_MILLIS);
}

#[test]
fn widths_agree() {
    for s in [
        "",
        "hello",
        "你好",
        "ＨＥＬＬＯ",
        "한국어",
        "かな カナ",
        "emoji 😀",
        "mixed 汉a，。",
        "\u{1100}\u{115F}\u{1160}",
        "\u{20000}\u{3FFFD}\u{3FFFE}",
    ] {
        assert_eq!(sim::width(s), pubbot_protocol::width(s), "{s:?}");
    }
}

#[test]
fn amr_walkers_agree() {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for t in 0..16u8 {
        cases.push((format!("type {t}"), amr(t, 3)));
    }
    let mut cut = amr(7, 2);
    cut.pop();
    cases.push(("cut short".into(), cut));
    cases.push(("header only".into(), b"#!AMR\n".to_vec()));
    cases.push(("no header".into(), vec![0u8; 13]));
    cases.push(("three seconds".into(), amr(0, 150)));
    for (name, bytes) in cases {
        assert_eq!(
            sim::amr_duration_millis(&bytes),
            pubbot_protocol::amr_duration_millis(&bytes),
            "{name}"
        );
    }
}

#[test]
fn signatures_and_timestamps_agree() {
    for (secret, nonce, ts) in [
        ("Y1W2MeFwwwRxa0", "14314", "1408706337"),
        ("s", "", ""),
        ("秘密", "n", "1408706337123"),
    ] {
        assert_eq!(
            pubbot_sim::signature::sign(secret, nonce, ts),
            pubbot_protocol::sign(secret, nonce, ts)
        );
    }
    for v in [
        0i64,
        1_408_706_337,
        100_000_000_000,
        100_000_000_001,
        1_408_706_337_123,
    ] {
        assert_eq!(
            pubbot_sim::signature::timestamp_secs(&v.to_string()),
            Some(pubbot_protocol::unix_secs(v)),
            "{v}"
        );
    }
}
