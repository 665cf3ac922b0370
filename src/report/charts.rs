//! Charts drawn with plotters' SVG backend into strings, to be inlined in
//! the report page.
//!
//! Titles and legends are left to the page (HTML lays text out better than
//! the SVG backend, which can only estimate text widths); the charts carry
//! their axes, tick labels and data. Series colours come from [`color`], so
//! the page's legends match.

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Tableau's ten categorical colours: distinct, and readable on white.
const PALETTE: [(u8, u8, u8); 10] = [
    (78, 121, 167),
    (242, 142, 43),
    (225, 87, 89),
    (118, 183, 178),
    (89, 161, 79),
    (237, 201, 72),
    (176, 122, 161),
    (255, 157, 167),
    (156, 117, 95),
    (186, 176, 172),
];

const FONT: &str = "sans-serif";
/// plotters' SVG backend writes `font-size` as this divided by 1.24: 14 px.
const FONT_SIZE: f64 = 17.4;
const LINE_WIDTH: u32 = 960;
const LINE_HEIGHT: u32 = 340;

/// The colour of series `i`, as `#rrggbb` for the page's legends.
pub fn color(i: usize) -> String {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn rgb(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// One line of a line chart: `(epoch, value)` points; an epoch without a
/// value is simply absent.
pub struct Series {
    pub name: String,
    pub points: Vec<(usize, f64)>,
}

/// A chart of values per epoch, one line per series.
pub struct LineChart<'a> {
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// Clamp the value axis to this range (for scores in [0, 1]).
    pub bounds: Option<(f64, f64)>,
}

/// Draws `chart` as an SVG element; `None` when it has no point at all.
pub fn line_chart(chart: &LineChart<'_>) -> Result<Option<String>> {
    let points = chart.series.iter().flat_map(|s| &s.points);
    let (Some(first), Some(last)) = (
        points.clone().map(|p| p.0).min(),
        points.clone().map(|p| p.0).max(),
    ) else {
        return Ok(None);
    };
    let values: Vec<f64> = points.map(|p| p.1).filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return Ok(None);
    }
    let (y0, y1) = value_range(&values, chart.bounds);
    // One epoch still gets an axis with room on both sides.
    let (x0, x1) = if first == last {
        (first as i64 - 1, last as i64 + 1)
    } else {
        (first as i64, last as i64)
    };
    let decimals = decimals_for(y1 - y0);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (LINE_WIDTH, LINE_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut plot = ChartBuilder::on(&root)
            .margin(12)
            .margin_right(24)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(drawing)?;
        let y_format = |v: &f64| format!("{v:.decimals$}");
        plot.configure_mesh()
            .x_desc("epoch")
            .y_desc(chart.y_label)
            .x_labels(((x1 - x0) as usize + 1).min(12))
            .x_label_formatter(&|x| x.to_string())
            .y_labels(6)
            .max_light_lines(2)
            .y_label_formatter(&y_format)
            .label_style((FONT, FONT_SIZE))
            .axis_desc_style((FONT, FONT_SIZE))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(drawing)?;
        for (i, series) in chart.series.iter().enumerate() {
            let color = rgb(i);
            let points: Vec<(i64, f64)> = series
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| (x as i64, y))
                .collect();
            plot.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(drawing)?;
            plot.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(Some(inline(svg)))
}

/// One horizontal bar: a label and its value, with an optional spread drawn
/// as a whisker from `value - spread` to `value + spread`.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub spread: Option<f64>,
}

/// Horizontal bars, one row per item, first item at the top; the value
/// axis spans `range`. Rows grow the chart downwards.
pub fn bar_chart(bars: &[Bar], x_label: &str, range: (f64, f64)) -> Result<String> {
    let rows = bars.len().max(1) as i32;
    let longest = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(0);
    // The SVG backend cannot measure text: about 8 px per character at 14 px.
    let label_area = (longest as u32 * 8 + 16).clamp(60, 320);
    let height = 90 + 24 * rows as u32;
    let (x0, x1) = range;
    let value_decimals = decimals_for(x1 - x0) + 1;
    let row_of = |i: usize| rows - 1 - i as i32;
    let label_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(r) | SegmentValue::Exact(r) => {
            let i = (rows - 1 - r) as usize;
            bars.get(i).map(|b| b.label.clone()).unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (LINE_WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut plot = ChartBuilder::on(&root)
            .margin(12)
            .margin_right(70)
            .x_label_area_size(48)
            .y_label_area_size(label_area)
            // An i32 range counts both ends: rows - 1 ends at the last row.
            .build_cartesian_2d(x0..x1, (0..rows - 1).into_segmented())
            .map_err(drawing)?;
        let x_format = |v: &f64| format!("{v:.*}", decimals_for(x1 - x0));
        plot.configure_mesh()
            .disable_y_mesh()
            .max_light_lines(1)
            .x_desc(x_label)
            .x_labels(8)
            .x_label_formatter(&x_format)
            .y_labels(rows as usize)
            .y_label_formatter(&label_of)
            .label_style((FONT, FONT_SIZE))
            .axis_desc_style((FONT, FONT_SIZE))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(drawing)?;

        let base = 0.0f64.clamp(x0, x1);
        let color = rgb(0);
        plot.draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let row = row_of(i);
            let value = bar.value.clamp(x0, x1);
            let mut rect = Rectangle::new(
                [
                    (base, SegmentValue::Exact(row)),
                    (value, SegmentValue::Exact(row + 1)),
                ],
                color.mix(0.85).filled(),
            );
            rect.set_margin(4, 4, 0, 0);
            rect
        }))
        .map_err(drawing)?;
        plot.draw_series(bars.iter().enumerate().filter_map(|(i, bar)| {
            let spread = bar.spread?;
            let row = SegmentValue::CenterOf(row_of(i));
            let (lo, hi) = (
                (bar.value - spread).clamp(x0, x1),
                (bar.value + spread).clamp(x0, x1),
            );
            Some(PathElement::new(
                vec![(lo, row.clone()), (hi, row)],
                BLACK.stroke_width(2),
            ))
        }))
        .map_err(drawing)?;
        if x0 < 0.0 {
            plot.draw_series(std::iter::once(PathElement::new(
                vec![(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Last)],
                BLACK.stroke_width(1),
            )))
            .map_err(drawing)?;
        }
        // Each value is written just past the far end of its bar or
        // whisker: right of a positive value, left of a negative one.
        let font = (FONT, FONT_SIZE * 0.9).into_font();
        let right_of = TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Center));
        let left_of = TextStyle::from(font).pos(Pos::new(HPos::Right, VPos::Center));
        plot.draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let spread = bar.spread.unwrap_or(0.0);
            let negative = bar.value < 0.0;
            let (end, style, shift) = if negative {
                (bar.value - spread, left_of.clone(), -6)
            } else {
                (bar.value + spread, right_of.clone(), 6)
            };
            let at = (end.clamp(x0, x1), SegmentValue::CenterOf(row_of(i)));
            let text = format!("{:.value_decimals$}", bar.value);
            EmptyElement::at(at) + Text::new(text, (shift, 0), style)
        }))
        .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(inline(svg))
}

/// The value axis: the data's range with a margin, within `bounds`.
fn value_range(values: &[f64], bounds: Option<(f64, f64)>) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.08
    } else {
        (hi.abs() * 0.05).max(0.01)
    };
    let (mut lo, mut hi) = (lo - pad, hi + pad);
    if let Some((min, max)) = bounds {
        lo = lo.max(min);
        hi = hi.min(max);
    }
    (lo, hi)
}

/// Decimals that tell tick labels `span / 6` apart.
fn decimals_for(span: f64) -> usize {
    let step = span / 6.0;
    if step.is_nan() || step <= 0.0 || step.is_infinite() {
        return 2;
    }
    (-step.log10().floor()).clamp(0.0, 6.0) as usize
}

/// The SVG ready to sit inside HTML: the namespace declaration, which
/// inline SVG does not need, is dropped so the page names no URL at all.
fn inline(svg: String) -> String {
    svg.replace(" xmlns=\"http://www.w3.org/2000/svg\"", "")
}

fn drawing<E: std::fmt::Display>(err: E) -> anyhow::Error {
    anyhow!("cannot draw a chart: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_has_one_path_per_series() {
        let series = [
            Series {
                name: "a".to_string(),
                points: vec![(1, 0.5), (2, 0.7), (3, 0.75)],
            },
            Series {
                name: "b".to_string(),
                points: vec![(1, 0.2), (3, 0.4)],
            },
        ];
        let chart = LineChart {
            y_label: "accuracy",
            series: &series,
            bounds: Some((0.0, 1.0)),
        };
        let svg = line_chart(&chart).unwrap().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(!svg.contains("http"));
        // One line and one dot per point, in each series' colour.
        for (i, points) in [(0, 3), (1, 2)] {
            let stroke = format!("stroke=\"{}\"", color(i).to_uppercase());
            let fill = format!("fill=\"{}\"", color(i).to_uppercase());
            let lines = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(&stroke));
            assert_eq!(lines.count(), 1, "series {i}: {svg}");
            let dots = svg
                .lines()
                .filter(|l| l.starts_with("<circle") && l.contains(&fill));
            assert_eq!(dots.count(), points, "series {i}");
        }
        assert!(
            svg.contains(">\nepoch\n<") || svg.contains(">epoch<"),
            "{svg}"
        );
    }

    #[test]
    fn empty_line_chart_is_none() {
        let series = [Series {
            name: "a".to_string(),
            points: vec![(1, f64::NAN)],
        }];
        let chart = LineChart {
            y_label: "x",
            series: &series,
            bounds: None,
        };
        assert!(line_chart(&chart).unwrap().is_none());
    }

    #[test]
    fn bar_chart_labels_every_row_and_escapes_them() {
        let bars: Vec<Bar> = ["a<b", "c&d", "plain"]
            .iter()
            .enumerate()
            .map(|(i, label)| Bar {
                label: label.to_string(),
                value: 0.25 * i as f64,
                spread: None,
            })
            .collect();
        let svg = bar_chart(&bars, "F1", (0.0, 1.0)).unwrap();
        assert!(svg.contains("a&lt;b") && svg.contains("c&amp;d") && svg.contains("plain"));
        assert!(!svg.contains("a<b"));
        assert_eq!(svg.matches("<rect").count(), 1 + 3, "{svg}");
    }

    #[test]
    fn tick_decimals_follow_the_span() {
        assert_eq!(decimals_for(1.0), 1);
        assert_eq!(decimals_for(0.05), 3);
        assert_eq!(decimals_for(60.0), 0);
    }

    #[test]
    fn flat_values_still_get_a_range() {
        let (lo, hi) = value_range(&[1.0, 1.0], None);
        assert!(lo < 1.0 && hi > 1.0);
        let (lo, hi) = value_range(&[0.0, 1.0], Some((0.0, 1.0)));
        assert_eq!((lo, hi), (0.0, 1.0));
    }
}
