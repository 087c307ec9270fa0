//! The keyword index: literal keywords in one Aho-Corasick automaton per
//! case mode, and the text normalisation every match uses (NFKC, trimmed,
//! folded), so deciding costs grow with the message, not the rule count.

use std::borrow::Cow;
use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind as AcMatchKind};
use unicode_normalization::UnicodeNormalization;

use crate::model::MatchKind;

/// Literal keywords of one case mode, in one automaton.
#[derive(Default)]
pub(crate) struct LiteralIndex {
    pub(crate) automaton: Option<AhoCorasick>,
    /// Per automaton pattern: (rule position, keyword position, kind).
    pub(crate) targets: Vec<Vec<(u32, u16, MatchKind)>>,
    /// Equals keywords by their text.
    pub(crate) equals: HashMap<String, Vec<(u32, u16)>>,
}

impl LiteralIndex {
    pub(crate) fn build(entries: Vec<(String, u32, u16, MatchKind)>) -> Result<Self, String> {
        let mut idx = Self::default();
        let mut pattern_ids: HashMap<String, usize> = HashMap::new();
        let mut patterns: Vec<String> = Vec::new();
        for (text, rule, kw, kind) in entries {
            if kind == MatchKind::Equals {
                idx.equals.entry(text).or_default().push((rule, kw));
                continue;
            }
            let id = *pattern_ids.entry(text.clone()).or_insert_with(|| {
                patterns.push(text);
                idx.targets.push(Vec::new());
                patterns.len() - 1
            });
            idx.targets[id].push((rule, kw, kind));
        }
        if !patterns.is_empty() {
            let ac = AhoCorasickBuilder::new()
                .match_kind(AcMatchKind::Standard)
                .build(&patterns)
                .map_err(|e| e.to_string())?;
            idx.automaton = Some(ac);
        }
        Ok(idx)
    }

    pub(crate) fn find(&self, text: &str, out: &mut Vec<(u32, u16)>) {
        if !self.equals.is_empty() {
            if let Some(hits) = self.equals.get(text) {
                out.extend_from_slice(hits);
            }
        }
        let Some(ac) = &self.automaton else { return };
        for m in ac.find_overlapping_iter(text) {
            for &(rule, kw, kind) in &self.targets[m.pattern().as_usize()] {
                if kind == MatchKind::Contains || m.start() == 0 {
                    out.push((rule, kw));
                }
            }
        }
    }
}

/// Unicode NFKC, trimmed (full-width and half-width forms match).
pub fn normalize(text: &str) -> String {
    normalized(text).into_owned()
}

/// [`normalize`] without a copy for ASCII text (NFKC leaves ASCII alone).
pub(crate) fn normalized(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        Cow::Borrowed(text.trim())
    } else {
        Cow::Owned(text.nfkc().collect::<String>().trim().to_owned())
    }
}

/// Lowercase for case-insensitive keywords, without a copy when nothing
/// changes.
pub(crate) fn fold(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    } else {
        Cow::Owned(text.to_lowercase())
    }
}
