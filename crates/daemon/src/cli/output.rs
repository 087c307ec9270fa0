//! What every command shares for stdout: JSON, and tables whose columns are
//! measured by display width (a Chinese name is two columns a character,
//! as a terminal shows it), through `comfy-table`.

use comfy_table::{presets, CellAlignment, ColumnConstraint, ContentArrangement, Table};

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A plain table: a header line, columns two spaces apart, no borders, no
/// wrapping (a long value widens its column; pipe to `less -S`). Columns
/// listed in `right` (by index) are right-aligned (numbers).
pub(super) fn table(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        column.set_constraint(ColumnConstraint::ContentWidth);
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Prints a table without trailing blanks.
pub(super) fn print_table(t: &Table) {
    for line in t.lines() {
        println!("{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_names_keep_the_columns_aligned() {
        let mut t = table(&["NAME", "KIND", "BYTES"], &[2]);
        t.add_row(vec!["欢迎图", "image", "1024"]);
        t.add_row(vec!["banner", "image", "65536"]);
        t.add_row(vec!["新年快乐横幅", "thumb", "7"]);
        let lines: Vec<String> = t.lines().map(|l| l.trim_end().to_owned()).collect();
        assert_eq!(
            lines.len(),
            4,
            "a header and three rows, no rules: {lines:#?}"
        );
        assert!(lines[0].starts_with("NAME"), "{lines:#?}");
        // Every row's second column starts at the same display column, and
        // the numbers end at the same one.
        let kind_at: Vec<usize> = lines
            .iter()
            .zip(["KIND", "image", "image", "thumb"])
            .map(|(l, kind)| unicode_width(&l[..l.find(kind).unwrap()]))
            .collect();
        assert!(kind_at.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
        let ends: Vec<usize> = lines.iter().map(|l| unicode_width(l)).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
    }

    /// Display width as a terminal shows it: CJK ideographs take two columns.
    fn unicode_width(s: &str) -> usize {
        s.chars()
            .map(|c| {
                if ('\u{4e00}'..='\u{9fff}').contains(&c) {
                    2
                } else {
                    1
                }
            })
            .sum()
    }
}
