//! Deciding 100k mixed messages against 10, 1,000 and 10,000 literal rules
//! and 1,000 regex rules; beside the naive linear scan of the same rules and
//! raw Aho-Corasick search over the same messages, measured in the same run.
//!
//! `cargo bench -p pubbot-rules --bench decide`; under `cargo test` it runs
//! on a few messages as a smoke test.

use std::hint::black_box;
use std::time::Instant;

use aho_corasick::{AhoCorasickBuilder, MatchKind as AcMatchKind};
use chrono::{TimeZone, Utc};
use pubbot_rules::{
    Context, Flow, Incoming, IncomingKind, Keyword, MatchKind, Options, Reply, ReplyMode, Rule,
    RuleKind, RuleSet, Trigger,
};

/// A deterministic word generator (no randomness crate needed).
struct Words(u64);

impl Words {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn word(&mut self) -> String {
        let len = 5 + (self.next() % 4) as usize;
        (0..len)
            .map(|_| char::from(b'a' + (self.next() % 26) as u8))
            .collect()
    }
}

fn rule(i: usize, keyword: Keyword) -> Rule {
    Rule {
        id: i as i64 + 1,
        name: format!("rule-{i}"),
        app_key: None,
        mcid: None,
        enabled: true,
        priority: (i % 7) as i32,
        kind: RuleKind::Keyword,
        trigger: Trigger {
            keywords: Some(vec![keyword]),
            ..Trigger::default()
        },
        replies: vec![Reply::Text {
            text: format!("reply {i}"),
        }],
        mode: ReplyMode::All,
        flow: Flow::Stop,
        timezone: None,
        when: None,
        set_state: Default::default(),
        clear_state: Vec::new(),
        handler: None,
        fallback: Vec::new(),
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n_messages = if bench { 100_000 } else { 200 };
    let mut w = Words(42);
    let keywords: Vec<String> = (0..10_000).map(|_| w.word()).collect();
    // 100k messages of 3..8 words; about a third carry a keyword of the
    // 10-rule set, a third one of the larger sets, the rest none.
    let messages: Vec<String> = (0..n_messages)
        .map(|i| {
            let mut words: Vec<String> = (0..3 + w.next() % 5).map(|_| w.word()).collect();
            match i % 3 {
                0 => words.push(keywords[(w.next() % 10) as usize].to_uppercase()),
                1 => words.push(keywords[(w.next() % 10_000) as usize].clone()),
                _ => {}
            }
            words.join(" ")
        })
        .collect();
    let ctx = Context {
        now: Utc.with_ymd_and_hms(2026, 11, 26, 4, 0, 0).unwrap(),
        random: 7,
    };

    println!(
        "{} messages, median of 3 runs each (messages/second)",
        messages.len()
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "rule set", "compiled", "linear", "raw AC", "vs linear", "vs AC"
    );
    let literal = |n: usize| -> Vec<Rule> {
        (0..n)
            .map(|i| {
                rule(
                    i,
                    Keyword {
                        pattern: keywords[i].clone(),
                        match_kind: MatchKind::Contains,
                        case_sensitive: false,
                    },
                )
            })
            .collect()
    };
    for n in [10, 1_000, 10_000] {
        report(
            &format!("{n} literal rules"),
            literal(n),
            &keywords[..n],
            &messages,
            &ctx,
        );
    }
    let regex: Vec<Rule> = (0..1_000)
        .map(|i| {
            rule(
                i,
                Keyword {
                    pattern: format!(r"\b{}\s*(\d+)?", keywords[i]),
                    match_kind: MatchKind::Regex,
                    case_sensitive: false,
                },
            )
        })
        .collect();
    report(
        "1,000 regex rules",
        regex,
        &keywords[..1_000],
        &messages,
        &ctx,
    );
}

fn median(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..3).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[1]
}

fn msg(text: &str) -> Incoming<'_> {
    Incoming {
        app_key: "app",
        mcid: "shop",
        user: "alice",
        kind: IncomingKind::Text,
        text,
        event: "",
        state: None,
    }
}

fn report(label: &str, rules: Vec<Rule>, patterns: &[String], messages: &[String], ctx: &Context) {
    let set = RuleSet::compile(rules, &Options::default()).unwrap();
    let compiled = median(|| {
        let t = Instant::now();
        for m in messages {
            black_box(set.decide(&msg(m), ctx));
        }
        messages.len() as f64 / t.elapsed().as_secs_f64()
    });
    // The linear scan is slow on big sets: time it on a slice.
    let sample = &messages[..messages.len().min(if patterns.len() >= 1_000 {
        2_000
    } else {
        messages.len()
    })];
    let linear = median(|| {
        let t = Instant::now();
        for m in sample {
            black_box(set.decide_linear(&msg(m), ctx));
        }
        sample.len() as f64 / t.elapsed().as_secs_f64()
    });
    let ac = AhoCorasickBuilder::new()
        .match_kind(AcMatchKind::Standard)
        .ascii_case_insensitive(true)
        .build(patterns)
        .unwrap();
    let raw = median(|| {
        let t = Instant::now();
        for m in messages {
            black_box(ac.find_overlapping_iter(m.as_str()).count());
        }
        messages.len() as f64 / t.elapsed().as_secs_f64()
    });
    println!(
        "{label:<28} {compiled:>12.0} {linear:>12.0} {raw:>12.0} {:>9.1}x {:>9.2}x",
        compiled / linear,
        compiled / raw
    );
}
