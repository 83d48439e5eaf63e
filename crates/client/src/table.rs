//! Plain aligned text tables, as `docker ps` or `tailscale status` print them.

/// A table with a header row; columns are separated by two spaces and the
/// last column is not padded.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut cells: Vec<String> = cells.into_iter().map(|c| clean(&c.into())).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                if i + 1 < line.len() {
                    text.extend(std::iter::repeat_n(' ', w - width(cell)));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// Cells are one line: control characters (a server-side name can hold none,
/// but never let one reach the terminal) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(["ID", "NAME", "STATE"]);
        t.row(["1", "Press line 3", "active"]);
        t.row(["22", "Ünï", ""]);
        assert_eq!(
            t.render(),
            "ID  NAME          STATE\n1   Press line 3  active\n22  Ünï\n"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut t = Table::new(["A"]);
        t.row(["x\u{1b}[31my\nz"]);
        assert!(!t.render().contains('\u{1b}'));
        assert_eq!(t.render().lines().count(), 2);
    }
}
