//! The HTML page: escaping, a few building blocks, and the page shell with
//! its inline style. Everything the page shows is inside the file: no
//! script, no font, no style sheet, no image is fetched from anywhere.

use std::fmt::Write;

/// `text` safe to place in HTML text and in double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A chart with its heading, legend and a note under it. `svg` is trusted
/// markup from [`super::charts`]; every other argument is plain text.
pub fn figure(title: &str, legend_names: &[String], svg: &str, note: &str) -> String {
    let mut out = format!("<figure>\n<figcaption>{}</figcaption>\n", escape(title));
    if !legend_names.is_empty() {
        out += &legend(legend_names);
    }
    out += svg;
    if !note.is_empty() {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(note));
    }
    out + "</figure>\n"
}

/// Coloured swatches naming the series of a chart, in series order.
pub fn legend(names: &[String]) -> String {
    let mut out = String::from("<ul class=\"legend\">");
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            out,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
            super::charts::color(i),
            escape(name)
        );
    }
    out + "</ul>\n"
}

/// One table cell: its text and an optional class (`num`, `good`, `bad`,
/// ...) and inline background colour.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub text: String,
    pub class: &'static str,
    pub background: Option<String>,
}

impl Cell {
    pub fn text(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            ..Cell::default()
        }
    }

    pub fn num(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            class: "num",
            background: None,
        }
    }

    pub fn with_class(mut self, class: &'static str) -> Cell {
        self.class = class;
        self
    }
}

/// A table with one header row; every text is escaped.
pub fn table(headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    for header in headers {
        let _ = write!(out, "<th>{}</th>", escape(header));
    }
    out += "</tr></thead>\n<tbody>\n";
    for row in rows {
        out += "<tr>";
        for cell in row {
            out += "<td";
            if !cell.class.is_empty() {
                let _ = write!(out, " class=\"{}\"", cell.class);
            }
            if let Some(color) = &cell.background {
                let _ = write!(out, " style=\"background:{}\"", escape(color));
            }
            let _ = write!(out, ">{}</td>", escape(&cell.text));
        }
        out += "</tr>\n";
    }
    out + "</tbody>\n</table>\n"
}

/// A paragraph of plain text.
pub fn paragraph(text: &str) -> String {
    format!("<p>{}</p>\n", escape(text))
}

/// The page being assembled: sections in order, each listed in the
/// contents at the top.
pub struct Page {
    title: String,
    sections: Vec<(String, String, String)>,
}

impl Page {
    pub fn new(title: &str) -> Page {
        Page {
            title: title.to_string(),
            sections: Vec::new(),
        }
    }

    /// Adds a section; `body` is markup built with this module's helpers.
    pub fn section(&mut self, heading: &str, body: String) {
        let id = format!("s{}", self.sections.len() + 1);
        self.sections.push((id, heading.to_string(), body));
    }

    /// The finished page; `subtitle` says what it was made from.
    pub fn finish(self, subtitle: &str) -> String {
        let title = escape(&self.title);
        let mut out = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
             <header><h1>{title}</h1>\n<p class=\"subtitle\">{}</p>\n",
            escape(subtitle)
        );
        out += "<nav><ol>";
        for (id, heading, _) in &self.sections {
            let _ = write!(out, "<li><a href=\"#{id}\">{}</a></li>", escape(heading));
        }
        out += "</ol></nav>\n</header>\n<main>\n";
        for (id, heading, body) in &self.sections {
            let _ = write!(
                out,
                "<section id=\"{id}\">\n<h2>{}</h2>\n{body}</section>\n",
                escape(heading)
            );
        }
        out + "</main>\n</body>\n</html>\n"
    }
}

const STYLE: &str = "\
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
  color: #222; background: #fafafa; margin: 0; line-height: 1.45; font-size: 15px; }
header, main { max-width: 1000px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
.subtitle { color: #555; margin: 0 0 8px; overflow-wrap: anywhere; }
nav ol { margin: 0; padding-left: 20px; columns: 2; }
section { margin-bottom: 24px; }
figure { margin: 16px 0; background: #fff; border: 1px solid #e2e2e2; border-radius: 6px;
  padding: 10px 12px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
figure svg { display: block; max-width: 100%; height: auto; }
.note { color: #555; font-size: 13px; margin: 6px 0 0; }
ul.legend { list-style: none; padding: 0; margin: 2px 0 6px; display: flex; flex-wrap: wrap;
  gap: 4px 18px; font-size: 14px; }
ul.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; }
table { border-collapse: collapse; background: #fff; margin: 10px 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.good { color: #176b2c; font-weight: 600; }
td.bad { color: #a11d1d; font-weight: 600; }
td.muted { color: #888; }
.scroll { overflow-x: auto; max-width: 100%; }
table.confusion td { text-align: right; min-width: 28px; font-variant-numeric: tabular-nums; }
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_characters() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain café"), "plain café");
    }

    #[test]
    fn tables_and_pages_escape_every_text() {
        let html = table(&["<h>"], &[vec![Cell::text("<td>")]]);
        assert!(html.contains("<th>&lt;h&gt;</th>") && html.contains("<td>&lt;td&gt;</td>"));
        let mut page = Page::new("a<b");
        page.section("c<d", paragraph("e<f"));
        let html = page.finish("g<h");
        for escaped in ["a&lt;b", "c&lt;d", "e&lt;f", "g&lt;h"] {
            assert!(html.contains(escaped), "{escaped}");
        }
        for raw in ["a<b", "c<d", "e<f", "g<h"] {
            assert!(!html.contains(raw), "{raw}");
        }
        assert!(!html.contains("http"));
    }
}
