//! The rule engine: every trigger, flow, template and compile error, and a
//! property test that the compiled engine decides what a linear scan does.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use pubbot_rules::{
    ActiveHours, ArticleTemplate, Context, Flow, Incoming, IncomingKind, Keyword, MatchKind, Media,
    On, Options, PlannedReply, Reply, ReplyMode, Rule, RuleFile, RuleKind, RuleSet, Trigger,
};

fn text_reply(t: &str) -> Reply {
    Reply::Text { text: t.into() }
}

fn rule(name: &str, keywords: &[(&str, MatchKind)], reply: &str) -> Rule {
    Rule {
        id: 0,
        name: name.into(),
        app_key: None,
        mcid: None,
        enabled: true,
        priority: 0,
        kind: RuleKind::Keyword,
        trigger: Trigger {
            keywords: if keywords.is_empty() {
                None
            } else {
                Some(
                    keywords
                        .iter()
                        .map(|(p, k)| Keyword {
                            pattern: (*p).into(),
                            match_kind: *k,
                            case_sensitive: false,
                        })
                        .collect(),
                )
            },
            ..Trigger::default()
        },
        replies: vec![text_reply(reply)],
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

fn compile(rules: Vec<Rule>) -> RuleSet {
    RuleSet::compile(rules, &Options::default()).unwrap()
}

fn noon_shanghai() -> DateTime<Utc> {
    // 2026-11-26 12:00 in Asia/Shanghai (a Thursday).
    Utc.with_ymd_and_hms(2026, 11, 26, 4, 0, 0).unwrap()
}

fn ctx() -> Context {
    Context {
        now: noon_shanghai(),
        random: 0,
    }
}

fn text(t: &str) -> Incoming<'_> {
    Incoming {
        app_key: "app",
        mcid: "shop",
        user: "alice",
        kind: IncomingKind::Text,
        text: t,
        event: "",
        state: None,
    }
}

fn of(kind: IncomingKind) -> Incoming<'static> {
    Incoming {
        app_key: "app",
        mcid: "shop",
        user: "alice",
        kind,
        text: "",
        event: "",
        state: None,
    }
}

fn texts(set: &RuleSet, msg: &Incoming<'_>, ctx: &Context) -> Vec<String> {
    set.decide(msg, ctx)
        .replies
        .into_iter()
        .map(|r| match r {
            PlannedReply::Text { content } => content,
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn keyword_match_kinds() {
    let set = compile(vec![
        rule("eq", &[("menu", MatchKind::Equals)], "EQ"),
        rule("pre", &[("order ", MatchKind::Prefix)], "PRE"),
        rule("has", &[("price", MatchKind::Contains)], "HAS"),
        rule("re", &[(r"^track (\d+)$", MatchKind::Regex)], "RE"),
    ]);
    assert_eq!(
        texts(&set, &text("  MENU "), &ctx()),
        ["EQ"],
        "trimmed, case-insensitive"
    );
    assert!(
        texts(&set, &text("the menu"), &ctx()).is_empty(),
        "equals is the whole text"
    );
    assert_eq!(texts(&set, &text("Order 42"), &ctx()), ["PRE"]);
    assert!(
        texts(&set, &text("my order 42"), &ctx()).is_empty(),
        "prefix is at the start"
    );
    assert_eq!(texts(&set, &text("what PRICE?"), &ctx()), ["HAS"]);
    assert_eq!(texts(&set, &text("TRACK 123"), &ctx()), ["RE"]);
    assert!(texts(&set, &text("track abc"), &ctx()).is_empty());
}

#[test]
fn nfkc_folds_full_width_forms() {
    let set = compile(vec![
        rule("hello", &[("hello", MatchKind::Equals)], "hi"),
        rule("cn", &[("ｶﾞ", MatchKind::Contains)], "kana"),
    ]);
    assert_eq!(texts(&set, &text("ＨＥＬＬＯ"), &ctx()), ["hi"]);
    assert_eq!(
        texts(&set, &text("ガ"), &ctx()),
        ["kana"],
        "half-width katakana pattern matches full-width text"
    );
}

#[test]
fn case_sensitive_keywords() {
    let mut r = rule("cs", &[], "CS");
    r.trigger.keywords = Some(vec![Keyword {
        pattern: "VIP".into(),
        match_kind: MatchKind::Contains,
        case_sensitive: true,
    }]);
    let set = compile(vec![r]);
    assert_eq!(texts(&set, &text("I am VIP"), &ctx()), ["CS"]);
    assert!(texts(&set, &text("I am vip"), &ctx()).is_empty());
}

#[test]
fn message_kinds_and_events() {
    let mut image = rule("image", &[], "nice picture");
    image.trigger.on = On::Image;
    let mut location = rule("where", &[], "thanks for the location");
    location.trigger.on = On::Location;
    let mut follow = rule("welcome", &[], "welcome {{ user }}");
    follow.kind = RuleKind::Follow;
    let mut bye = rule("bye", &[], "bye");
    bye.trigger.on = On::Unsubscribe;
    let mut fallback = rule("fallback", &[], "we will answer soon");
    fallback.kind = RuleKind::Default;
    let set = compile(vec![image, location, follow, bye, fallback]);
    assert_eq!(
        texts(&set, &of(IncomingKind::Image), &ctx()),
        ["nice picture"]
    );
    assert_eq!(
        texts(&set, &of(IncomingKind::Location), &ctx()),
        ["thanks for the location"]
    );
    assert_eq!(
        texts(&set, &of(IncomingKind::Subscribe), &ctx()),
        ["welcome alice"]
    );
    assert_eq!(texts(&set, &of(IncomingKind::Unsubscribe), &ctx()), ["bye"]);
    assert_eq!(
        texts(&set, &of(IncomingKind::Voice), &ctx()),
        ["we will answer soon"],
        "default for unmatched messages"
    );
    assert_eq!(
        texts(&set, &text("anything"), &ctx()),
        ["we will answer soon"]
    );

    let only_default = compile(vec![{
        let mut f = rule("fallback", &[], "x");
        f.kind = RuleKind::Default;
        f
    }]);
    assert!(
        only_default
            .decide(&of(IncomingKind::Subscribe), &ctx())
            .replies
            .is_empty(),
        "events get no default reply"
    );
}

#[test]
fn unlisted_events_are_answered_only_by_a_rule_that_names_them() {
    // R14: a menu click or a platform notice is an event, not a message.
    let mut any = rule("any", &[], "any message");
    any.priority = 5;
    let mut fallback = rule("fallback", &[], "we will answer soon");
    fallback.kind = RuleKind::Default;
    let unknown_type = Incoming {
        kind: IncomingKind::Other,
        ..of(IncomingKind::Other)
    };
    let click = Incoming {
        event: "CLICK",
        ..of(IncomingKind::Event)
    };
    let set = compile(vec![any.clone(), fallback.clone()]);
    assert!(
        set.decide(&click, &ctx()).replies.is_empty(),
        "no reply to an event"
    );
    assert_eq!(
        texts(&set, &unknown_type, &ctx()),
        ["any message"],
        "an unknown message type is still a message (R4)"
    );

    let mut menu = rule("menu", &[], "here is the menu");
    menu.trigger.on = On::Event;
    menu.trigger.event = Some("click".into());
    let mut notices = rule("notices", &[], "noted");
    notices.trigger.on = On::Event;
    notices.priority = -1;
    let set = compile(vec![any, fallback, menu, notices]);
    assert_eq!(
        texts(&set, &click, &ctx()),
        ["here is the menu"],
        "named, case-insensitively"
    );
    let job = Incoming {
        event: "JOB_DONE",
        ..of(IncomingKind::Event)
    };
    assert_eq!(
        texts(&set, &job, &ctx()),
        ["noted"],
        "on = event without a name"
    );

    let mut wrong = rule("wrong", &[], "x");
    wrong.trigger.event = Some("CLICK".into());
    let e = RuleSet::compile(vec![wrong], &Options::default()).unwrap_err();
    assert!(e.to_string().contains("on = \"event\""), "{e}");
}

#[test]
fn priority_stop_and_continue() {
    let mut low = rule("low", &[("sale", MatchKind::Contains)], "LOW");
    low.priority = 1;
    let mut high = rule("high", &[("sale", MatchKind::Contains)], "HIGH");
    high.priority = 10;
    let set = compile(vec![low.clone(), high.clone()]);
    assert_eq!(
        texts(&set, &text("sale!"), &ctx()),
        ["HIGH"],
        "higher first, stop by default"
    );

    high.flow = Flow::Continue;
    let set = compile(vec![low.clone(), high.clone()]);
    assert_eq!(texts(&set, &text("sale!"), &ctx()), ["HIGH", "LOW"]);
    let d = set.decide(&text("sale!"), &ctx());
    assert_eq!(
        d.matched
            .iter()
            .map(|m| m.rule.as_str())
            .collect::<Vec<_>>(),
        ["high", "low"]
    );
    assert_eq!(d.matched[0].why, "keyword \"sale\" (contains)");

    // Ties: lower id first.
    let mut a = rule("a", &[("x", MatchKind::Contains)], "A");
    a.id = 7;
    let mut b = rule("b", &[("x", MatchKind::Contains)], "B");
    b.id = 3;
    assert_eq!(texts(&compile(vec![a, b]), &text("x"), &ctx()), ["B"]);

    // A default rule does not fire when a continue rule matched.
    let mut fallback = rule("fallback", &[], "F");
    fallback.kind = RuleKind::Default;
    let set = compile(vec![high, fallback]);
    assert_eq!(texts(&set, &text("sale"), &ctx()), ["HIGH"]);
}

#[test]
fn all_or_random_one() {
    let mut r = rule("multi", &[("hi", MatchKind::Contains)], "one");
    r.replies = vec![text_reply("one"), text_reply("two"), text_reply("three")];
    let all = compile(vec![r.clone()]);
    assert_eq!(texts(&all, &text("hi"), &ctx()), ["one", "two", "three"]);
    r.mode = ReplyMode::RandomOne;
    let random = compile(vec![r]);
    let picks: Vec<Vec<String>> = (0..3)
        .map(|n| texts(&random, &text("hi"), &Context { random: n, ..ctx() }))
        .collect();
    assert_eq!(picks, [vec!["one"], vec!["two"], vec!["three"]]);
    assert_eq!(
        texts(&random, &text("hi"), &Context { random: 4, ..ctx() }),
        ["two"],
        "same input, same pick"
    );
}

#[test]
fn senders_and_scope() {
    let mut vip = rule("vip", &[("hi", MatchKind::Contains)], "VIP");
    vip.trigger.senders = Some(vec!["bob".into()]);
    vip.priority = 5;
    let mut other_shop = rule("other", &[("hi", MatchKind::Contains)], "OTHER");
    other_shop.mcid = Some("other-shop".into());
    other_shop.priority = 4;
    let mut other_app = rule("other-app", &[("hi", MatchKind::Contains)], "OTHER-APP");
    other_app.app_key = Some("zzz".into());
    other_app.priority = 3;
    let plain = rule("plain", &[("hi", MatchKind::Contains)], "PLAIN");
    let set = compile(vec![vip, other_shop, other_app, plain]);
    assert_eq!(texts(&set, &text("hi"), &ctx()), ["PLAIN"]);
    let bob = Incoming {
        user: "bob",
        ..text("hi")
    };
    assert_eq!(texts(&set, &bob, &ctx()), ["VIP"]);
    let there = Incoming {
        mcid: "other-shop",
        ..text("hi")
    };
    assert_eq!(texts(&set, &there, &ctx()), ["OTHER"]);
}

#[test]
fn active_hours_across_midnight_and_time_zones() {
    let mut closed = rule("closed", &[], "we are closed, we answer tomorrow");
    closed.priority = 10;
    closed.trigger.active = Some(ActiveHours {
        from: "22:00".into(),
        to: "08:00".into(),
        days: None,
    });
    let mut fallback = rule("open", &[], "OPEN");
    fallback.kind = RuleKind::Default;
    let set = compile(vec![closed.clone(), fallback.clone()]);
    let at = |h, m| Context {
        now: Utc.with_ymd_and_hms(2026, 11, 26, h, m, 0).unwrap(),
        random: 0,
    };
    // Shanghai is UTC+8: 14:30 UTC is 22:30 local, 23:59 UTC is 07:59, 00:00 UTC is 08:00.
    assert_eq!(
        texts(&set, &text("x"), &at(14, 30)),
        ["we are closed, we answer tomorrow"]
    );
    assert_eq!(
        texts(&set, &text("x"), &at(23, 59)),
        ["we are closed, we answer tomorrow"]
    );
    assert_eq!(texts(&set, &text("x"), &at(0, 0)), ["OPEN"]);
    assert_eq!(texts(&set, &text("x"), &at(4, 0)), ["OPEN"]);

    // The same rule in New York time.
    closed.timezone = Some("America/New_York".into());
    let ny = compile(vec![closed.clone(), fallback.clone()]);
    // 2026-11-26 04:00 UTC is 23:00 on the 25th in New York.
    assert_eq!(
        texts(&ny, &text("x"), &at(4, 0)),
        ["we are closed, we answer tomorrow"]
    );

    // Weekdays of the local day: Thursday in Shanghai at 12:00.
    let mut weekend = rule("weekend", &[], "WEEKEND");
    weekend.priority = 10;
    weekend.trigger.active = Some(ActiveHours {
        from: "00:00".into(),
        to: "23:59".into(),
        days: Some(vec!["sat".into(), "sun".into()]),
    });
    let set = compile(vec![weekend, fallback]);
    assert_eq!(texts(&set, &text("x"), &ctx()), ["OPEN"]);
    let saturday = Context {
        now: Utc.with_ymd_and_hms(2026, 11, 28, 4, 0, 0).unwrap(),
        random: 0,
    };
    assert_eq!(texts(&set, &text("x"), &saturday), ["WEEKEND"]);
}

#[test]
fn templates_see_captures_user_account_and_local_time() {
    let r = Rule {
        replies: vec![text_reply(
            "{{ user }}@{{ account }}: order {{ captures[1] }} / {{ named.id }} at {{ now }} ({{ weekday }}), you said {{ text }}",
        )],
        ..rule("track", &[(r"track (?P<id>\d+)", MatchKind::Regex)], "")
    };
    let set = compile(vec![r]);
    assert_eq!(
        texts(&set, &text("please track 987"), &ctx()),
        ["alice@shop: order 987 / 987 at 2026-11-26 12:00 (thu), you said please track 987"]
    );
}

#[test]
fn news_image_and_voice_replies() {
    let mut r = rule("media", &[("show", MatchKind::Contains)], "");
    r.replies = vec![
        Reply::Image {
            url: Some("http://x/a.jpg".into()),
            media_id: None,
            media: None,
        },
        Reply::Voice {
            url: None,
            media_id: Some("m1".into()),
            media: None,
        },
        Reply::News {
            articles: vec![ArticleTemplate {
                title: "For {{ user }}".into(),
                description: Some("汉".repeat(1001)),
                url: Some("http://x".into()),
                picurl: "http://x/p.jpg".into(),
            }],
        },
    ];
    let d = compile(vec![r]).decide(&text("show"), &ctx());
    assert_eq!(
        d.replies[0],
        PlannedReply::Image {
            media: Media::Url("http://x/a.jpg".into())
        }
    );
    assert_eq!(
        d.replies[1],
        PlannedReply::Voice {
            media: Media::MediaId("m1".into())
        }
    );
    let PlannedReply::News { articles } = &d.replies[2] else {
        panic!("news expected")
    };
    assert_eq!(articles[0].title, "For alice");
    assert_eq!(
        articles[0].description.as_deref().map(pubbot_rules::width),
        Some(2000),
        "truncated to the width limit"
    );
    assert_eq!(d.problems.len(), 1);
}

#[test]
fn long_text_is_truncated_on_a_char_boundary_and_reported() {
    let r = Rule {
        replies: vec![text_reply("{{ text }}{{ text }}")],
        ..rule("echo", &[("汉", MatchKind::Contains)], "")
    };
    let long = "汉".repeat(500); // 1500 bytes, doubled: 3000
    let d = compile(vec![r]).decide(&text(&long), &ctx());
    let PlannedReply::Text { content } = &d.replies[0] else {
        panic!()
    };
    assert_eq!(
        content.len(),
        1998,
        "cut at the last whole character under 2000 bytes"
    );
    assert!(d.problems[0].message.contains("truncated"));
}

#[test]
fn render_errors_drop_the_reply_and_are_reported() {
    let mut r = rule("bad", &[("x", MatchKind::Contains)], "");
    r.replies = vec![
        text_reply("{{ \"a\" + 1 }}"),
        text_reply("still here"),
        text_reply("{{ '' }}"),
    ];
    let d = compile(vec![r]).decide(&text("x"), &ctx());
    assert_eq!(
        d.replies,
        [PlannedReply::Text {
            content: "still here".into()
        }]
    );
    assert_eq!(d.problems.len(), 2);
    assert!(
        d.problems[0].message.contains("render error"),
        "{:?}",
        d.problems
    );
    assert!(d.problems[1].message.contains("rendered empty"));
}

#[test]
fn every_compile_error_is_reported_at_once_naming_its_rule() {
    let mut empty_kw = rule("empty-keywords", &[], "x");
    empty_kw.trigger.keywords = Some(vec![]);
    let bad_regex = rule("bad-regex", &[("(unclosed", MatchKind::Regex)], "x");
    let mut tz = rule("bad-tz", &[], "x");
    tz.timezone = Some("Mars/Olympus".into());
    let mut articles = rule("eleven-articles", &[], "x");
    articles.replies = vec![Reply::News {
        articles: (0..11)
            .map(|i| ArticleTemplate {
                title: format!("t{i}"),
                description: None,
                url: None,
                picurl: "p".into(),
            })
            .collect(),
    }];
    let template = rule("bad-template", &[], "{{ unclosed");
    let mut hours = rule("bad-hours", &[], "x");
    hours.trigger.active = Some(ActiveHours {
        from: "25:00".into(),
        to: "08:00".into(),
        days: Some(vec!["someday".into()]),
    });
    let mut media = rule("bad-media", &[], "x");
    media.replies = vec![Reply::Image {
        url: None,
        media_id: None,
        media: None,
    }];
    let mut no_replies = rule("no-replies", &[], "x");
    no_replies.replies.clear();
    let mut kw_on_image = rule("keywords-on-image", &[("x", MatchKind::Contains)], "x");
    kw_on_image.trigger.on = On::Image;
    let dup = rule("bad-regex", &[], "x");
    let empty_pattern = rule("empty-pattern", &[("  ", MatchKind::Contains)], "x");
    let ok = rule("fine", &[("x", MatchKind::Contains)], "x");

    let errors = RuleSet::compile(
        vec![
            empty_kw,
            bad_regex,
            tz,
            articles,
            template,
            hours,
            media,
            no_replies,
            kw_on_image,
            dup,
            empty_pattern,
            ok,
        ],
        &Options::default(),
    )
    .unwrap_err();
    let by_rule = |name: &str| {
        errors
            .0
            .iter()
            .filter(|e| e.rule == name)
            .map(|e| e.problem.clone())
            .collect::<Vec<_>>()
    };
    assert!(by_rule("empty-keywords")[0].contains("keywords is empty"));
    assert!(by_rule("bad-regex").iter().any(|p| p.contains("bad regex")));
    assert!(by_rule("bad-regex").iter().any(|p| p.contains("same name")));
    assert!(by_rule("bad-tz")[0].contains("unknown time zone \"Mars/Olympus\""));
    assert!(by_rule("eleven-articles")[0].contains("11 articles"));
    assert!(by_rule("bad-template")[0].contains("template error"));
    assert_eq!(by_rule("bad-hours").len(), 2, "{:?}", by_rule("bad-hours"));
    assert!(by_rule("bad-media")[0].contains("exactly one of url, media_id or media"));
    assert!(by_rule("no-replies")[0].contains("no replies"));
    assert!(by_rule("keywords-on-image")[0].contains("keywords need text"));
    assert!(by_rule("empty-pattern")[0].contains("pattern is empty"));
    assert!(by_rule("fine").is_empty());
    let shown = errors.to_string();
    assert!(shown.starts_with(&format!("{} invalid rule(s):", errors.0.len())));
}

#[test]
fn explain_gives_every_rules_reason() {
    let mut disabled = rule("off", &[("hi", MatchKind::Contains)], "OFF");
    disabled.enabled = false;
    disabled.priority = 9;
    let mut first = rule("first", &[("hi", MatchKind::Contains)], "FIRST");
    first.priority = 5;
    let later = rule("later", &[("hi", MatchKind::Contains)], "LATER");
    let miss = rule("miss", &[("bye", MatchKind::Contains)], "MISS");
    let set = compile(vec![disabled, first, later, miss]);
    let e = set.explain(&text("hi there"), &ctx());
    let reasons: Vec<(&str, bool, &str)> = e
        .rules
        .iter()
        .map(|v| (v.rule.as_str(), v.matched, v.reason.as_str()))
        .collect();
    assert_eq!(reasons[0], ("off", false, "disabled"));
    assert_eq!(reasons[1], ("first", true, "keyword \"hi\" (contains)"));
    assert!(reasons[2].2.contains("\"first\" matched first and stops"));
    assert!(reasons[3].2.contains("not considered") || reasons[3].2 == "no keyword matched");
    assert_eq!(e.decision, set.decide(&text("hi there"), &ctx()));
}

#[test]
fn toml_and_json_round_trip() {
    let file = RuleFile::from_toml(
        r#"
[[rule]]
name = "hours"
priority = 5
flow = "continue"
timezone = "Asia/Shanghai"
trigger = { on = "text", keywords = [{ pattern = "hours" }, { pattern = "^h(\\d)$", match = "regex", case_sensitive = true }], senders = ["alice"], active = { from = "09:00", to = "18:00", days = ["mon", "fri"] } }
replies = [{ type = "text", text = "9-18" }, { type = "image", url = "http://x/a.jpg" }]
mode = "random_one"

[[rule]]
name = "news"
kind = "follow"
replies = [{ type = "news", articles = [{ title = "Hi", picurl = "http://x/p.jpg", description = "d" }] }]
"#,
    )
    .unwrap();
    assert_eq!(file.rules.len(), 2);
    assert_eq!(
        file.rules[0].trigger.keywords.as_ref().unwrap()[1].match_kind,
        MatchKind::Regex
    );
    let toml = file.to_toml().unwrap();
    assert_eq!(RuleFile::from_toml(&toml).unwrap(), file);
    assert_eq!(RuleFile::from_json(&file.to_json()).unwrap(), file);
    RuleSet::compile(file.rules, &Options::default()).unwrap();

    let typo = RuleFile::from_toml("[[rule]]\nname = \"x\"\nreplys = []\n").unwrap_err();
    assert!(typo.to_string().contains("replys"), "{typo}");
}

// ----- compiled engine == linear scan ---------------------------------------

const WORDS: &[&str] = &[
    "hi", "hello", "price", "menu", "order", "ＨＩ", "汉字", "sale", "a", "track",
];

fn arb_keyword() -> impl Strategy<Value = Keyword> {
    (0..WORDS.len(), 0..4u8, any::<bool>()).prop_map(|(w, k, cs)| {
        let (pattern, match_kind) = match k {
            0 => (WORDS[w].to_owned(), MatchKind::Contains),
            1 => (WORDS[w].to_owned(), MatchKind::Equals),
            2 => (WORDS[w].to_owned(), MatchKind::Prefix),
            _ => (
                format!("{}\\s*(\\d*)", regex_escape(WORDS[w])),
                MatchKind::Regex,
            ),
        };
        Keyword {
            pattern,
            match_kind,
            case_sensitive: cs,
        }
    })
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || !c.is_ascii() {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of(proptest::collection::vec(arb_keyword(), 1..3)),
        -2..3i32,
        0..5i64,
        any::<bool>(),
        0..6u8,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(keywords, priority, id, cont, kind, enabled, scoped)| {
            let (rule_kind, on) = match kind {
                0 | 1 => (RuleKind::Keyword, On::Any),
                2 => (RuleKind::Keyword, On::Text),
                3 => (RuleKind::Default, On::Any),
                4 => (RuleKind::Follow, On::Any),
                _ => (RuleKind::Keyword, On::Image),
            };
            let keywords = if matches!(on, On::Image) || rule_kind == RuleKind::Follow {
                None
            } else {
                keywords
            };
            Rule {
                id,
                name: String::new(),
                app_key: None,
                mcid: scoped.then(|| "other".to_owned()),
                enabled,
                priority,
                kind: rule_kind,
                trigger: Trigger {
                    on,
                    keywords,
                    ..Trigger::default()
                },
                replies: vec![text_reply("r"), text_reply("{{ captures[1] }}!")],
                mode: if id % 2 == 0 {
                    ReplyMode::All
                } else {
                    ReplyMode::RandomOne
                },
                flow: if cont { Flow::Continue } else { Flow::Stop },
                timezone: None,
                when: None,
                set_state: Default::default(),
                clear_state: Vec::new(),
                handler: None,
                fallback: Vec::new(),
            }
        })
}

fn arb_text() -> impl Strategy<Value = String> {
    proptest::collection::vec((0..WORDS.len(), 0..4u8), 0..4).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(w, sep)| format!("{}{}", WORDS[w], [" ", "", " 12 ", "!"][sep as usize]))
            .collect::<String>()
            .to_uppercase()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compiled_decides_what_a_linear_scan_decides(
        mut rules in proptest::collection::vec(arb_rule(), 0..12),
        msg_text in arb_text(),
        lower in any::<bool>(),
        kind in 0..4u8,
        random in any::<u64>(),
    ) {
        for (i, r) in rules.iter_mut().enumerate() {
            r.name = format!("r{i}");
        }
        let set = RuleSet::compile(rules, &Options::default()).unwrap();
        let msg_text = if lower { msg_text.to_lowercase() } else { msg_text };
        let kind = [IncomingKind::Text, IncomingKind::Text, IncomingKind::Image, IncomingKind::Subscribe][kind as usize];
        let msg = Incoming { app_key: "app", mcid: "shop", user: "u", kind, text: &msg_text, event: "", state: None };
        let ctx = Context { now: noon_shanghai(), random };
        let fast = set.decide(&msg, &ctx);
        prop_assert_eq!(&fast, &set.decide_linear(&msg, &ctx));
        prop_assert_eq!(fast, set.explain(&msg, &ctx).decision);
    }
}

#[test]
fn local_media_names_resolve_at_compile_time() {
    let mut banner = rule("banner", &[("welcome", MatchKind::Contains)], "");
    banner.replies = vec![Reply::Image {
        url: None,
        media_id: None,
        media: Some("welcome-banner".into()),
    }];
    let media = std::collections::HashMap::from([(
        "welcome-banner".to_owned(),
        vec![("app".to_owned(), "m-123".to_owned())],
    )]);
    let options = Options::default().with_media(media);
    let set = RuleSet::compile(vec![banner.clone()], &options).unwrap();
    let d = set.decide(&text("welcome!"), &ctx());
    assert_eq!(
        d.replies,
        [PlannedReply::Image {
            media: Media::MediaId("m-123".into())
        }]
    );
    // Unknown name: a compile error naming the rule.
    let e = RuleSet::compile(vec![banner], &Options::default()).unwrap_err();
    assert!(
        e.to_string().contains("banner") && e.to_string().contains("welcome-banner"),
        "{e}"
    );
}

#[test]
fn state_conditions_changes_and_handler_calls() {
    let file = RuleFile::from_toml(
        r#"
[[rule]]
name = "start"
trigger = { keywords = [{ pattern = "tea", match = "equals" }] }
set_state = { step = "ask_size" }
replies = [{ type = "text", text = "Which size?" }]

[[rule]]
name = "size"
priority = 10
when = { state = { step = "ask_size" } }
clear_state = ["step"]
set_state = { size = "picked" }
replies = [{ type = "text", text = "Size {{ text }} (was {{ state.step }})" }]

[[rule]]
name = "order"
trigger = { keywords = [{ pattern = "^order (?P<id>\\d+)$", match = "regex" }] }
handler = "orders"
fallback = [{ type = "text", text = "away" }]
"#,
    )
    .unwrap();
    let set = RuleSet::compile(file.rules, &Options::default()).unwrap();
    let d = set.decide(&text("tea"), &ctx());
    assert_eq!(
        pubbot_rules::next_state(None, &d),
        serde_json::json!({"step": "ask_size"})
    );
    let state = serde_json::json!({"step": "ask_size"});
    let with_state = Incoming {
        state: Some(&state),
        ..text("large")
    };
    let d = set.decide(&with_state, &ctx());
    assert_eq!(
        texts(&set, &with_state, &ctx()),
        ["Size large (was ask_size)"]
    );
    assert_eq!(
        pubbot_rules::next_state(Some(&state), &d),
        serde_json::json!({"size": "picked"})
    );
    // Without the state the size rule does not match, and explain says why.
    let e = set.explain(&text("large"), &ctx());
    let size = e.rules.iter().find(|v| v.rule == "size").unwrap();
    assert!(
        !size.matched && size.reason.contains("state.step is unset"),
        "{}",
        size.reason
    );
    // A handler rule plans a call with the captures and a rendered fallback.
    let d = set.decide(&text("order 42"), &ctx());
    match &d.replies[..] {
        [PlannedReply::Handler {
            handler,
            named,
            fallback,
            ..
        }] => {
            assert_eq!(handler, "orders");
            assert_eq!(named["id"], "42");
            assert_eq!(
                fallback,
                &[PlannedReply::Text {
                    content: "away".into()
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    // A fallback without a handler does not compile.
    let bad = RuleFile::from_toml(
        "[[rule]]\nname = \"x\"\nreplies = [{ type = \"text\", text = \"a\" }]\nfallback = [{ type = \"text\", text = \"b\" }]\n",
    )
    .unwrap();
    let e = RuleSet::compile(bad.rules, &Options::default()).unwrap_err();
    assert!(e.to_string().contains("fallback needs a handler"), "{e}");
}

/// Issue 27 item 5: a misspelt filter is refused when the rule compiles
/// (it used to import and then fail every render), wherever it stands.
#[test]
fn unknown_filters_are_refused_at_compile_time() {
    let problem = |template: &str| {
        RuleSet::compile(
            vec![rule("r", &[("x", MatchKind::Contains)], template)],
            &Options::default(),
        )
        .err()
        .map(|e| e.0[0].problem.clone())
    };
    let p = problem("hi {{ user | uper }}").expect("refused");
    assert!(p.contains("filter uper, which does not exist"), "{p}");
    // In a branch that is rarely taken, too.
    let p = problem("{% if text == 'never' %}{{ user | shout }}{% endif %}ok").expect("refused");
    assert!(p.contains("shout"), "{p}");
    // Real filters, arguments, a pipe inside a string, a test: fine.
    assert_eq!(
        problem("{{ user | upper }} {{ text | replace('a', 'b') | trim }}"),
        None
    );
    assert_eq!(problem("{{ 'a|b' ~ user | default('x') }}"), None);
    assert_eq!(
        problem("{% if user is defined %}{{ user | title }}{% endif %}"),
        None
    );
    // Broadcast templates are held to the same.
    let e =
        pubbot_rules::broadcast::check_broadcast_template("Good {{ weekday | uper }}").unwrap_err();
    assert!(e.contains("filter uper"), "{e}");
    assert!(
        pubbot_rules::broadcast::check_broadcast_template("Good {{ weekday | upper }}").is_ok()
    );
}
