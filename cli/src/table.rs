//! Aligned tables, coloured when stdout is a terminal.

use std::io::IsTerminal;

/// A colour for a cell's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
}

impl Tone {
    fn code(self) -> &'static str {
        match self {
            Tone::Plain => "",
            Tone::Good => "\x1b[32m",
            Tone::Warn => "\x1b[33m",
            Tone::Bad => "\x1b[31m",
        }
    }
}

/// Renders rows under headers, columns padded to their widest cell.
pub fn render(headers: &[&str], rows: &[Vec<(String, Tone)>]) -> String {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, (cell, _)) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<(String, Tone)>, out: &mut String| {
        let n = cells.len();
        for (i, (cell, tone)) in cells.into_iter().enumerate() {
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            if colour && tone != Tone::Plain {
                out.push_str(tone.code());
                out.push_str(&cell);
                out.push_str("\x1b[0m");
            } else {
                out.push_str(&cell);
            }
            if i + 1 < n {
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| ((*h).to_owned(), Tone::Plain)).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let t = render(&["NAME", "PHASE"], &[vec![("line-1".into(), Tone::Good), ("Connected".into(), Tone::Good)]]);
        assert_eq!(t, "NAME     PHASE\nline-1   Connected\n");
    }
}
