//! The run's report: a markdown table per model and per task, and a PNG chart of quality
//! against cost, with latency as the circle's size.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;

use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle};
use embedded_graphics::text::Text;

use super::tasks::Category;
use crate::store::bench::BenchResult;

/// One model's figures over a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// `provider/model`.
    pub model: String,
    /// Mean of the category means (each category counts the same).
    pub overall: f64,
    /// Mean score per category, in [`Category::ALL`] order (`None`: no task of it ran).
    pub by_category: Vec<Option<f64>>,
    /// Median whole-answer latency, ms.
    pub latency_p50_ms: f64,
    /// Median time to first content, ms.
    pub ttft_p50_ms: Option<f64>,
    /// Prompt and completion tokens, summed.
    pub tokens: (i64, i64),
    /// Summed cost (`None` if the price is unknown).
    pub cost_usd: Option<f64>,
    /// Tasks that got no answer.
    pub errors: usize,
    /// Tasks run, answered or not.
    pub tasks: usize,
}

/// How a result's model is named in the report: `provider/model`.
fn label(r: &BenchResult) -> String {
    format!("{}/{}", r.provider, r.model)
}

/// Per-model figures, in the order the models first appear.
pub fn summarize(results: &[BenchResult]) -> Vec<ModelSummary> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, Vec<&BenchResult>> = BTreeMap::new();
    for r in results {
        let name = label(r);
        if !by.contains_key(&name) {
            order.push(name.clone());
        }
        by.entry(name).or_default().push(r);
    }
    order
        .into_iter()
        .map(|name| {
            let rs = &by[&name];
            let by_category: Vec<Option<f64>> = Category::ALL
                .iter()
                .map(|c| {
                    mean(
                        rs.iter()
                            .filter(|r| r.category == c.as_str())
                            .map(|r| r.score),
                    )
                })
                .collect();
            let answered: Vec<&&BenchResult> = rs.iter().filter(|r| r.error.is_none()).collect();
            ModelSummary {
                overall: mean(by_category.iter().flatten().copied()).unwrap_or(0.0),
                by_category,
                latency_p50_ms: median(answered.iter().map(|r| r.latency_ms as f64)).unwrap_or(0.0),
                ttft_p50_ms: median(answered.iter().filter_map(|r| r.ttft_ms.map(|t| t as f64))),
                tokens: (
                    rs.iter().map(|r| r.prompt_tokens).sum(),
                    rs.iter().map(|r| r.completion_tokens).sum(),
                ),
                cost_usd: answered.iter().map(|r| r.cost_usd).sum::<Option<f64>>(),
                errors: rs.len() - answered.len(),
                tasks: rs.len(),
                model: name,
            }
        })
        .collect()
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, s) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| s / n as f64)
}

fn median(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = xs.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    })
}

/// The markdown report: per model, then per task.
pub fn markdown(run_id: &str, when: &str, results: &[BenchResult]) -> String {
    let models = summarize(results);
    let mut out = String::new();
    let tasks: Vec<(&str, &str)> = {
        let mut seen = Vec::new();
        for r in results {
            if !seen.iter().any(|(t, _)| *t == r.task.as_str()) {
                seen.push((r.task.as_str(), r.category.as_str()));
            }
        }
        seen
    };
    let _ = writeln!(
        out,
        "## llm-gateway bench: run `{run_id}`, {when}, {} model(s) × {} task(s)\n",
        models.len(),
        tasks.len()
    );
    let _ = writeln!(
        out,
        "| model | overall | knowledge | code | summarization | reasoning | instruction following | latency p50 (ms) | TTFT p50 (ms) | tokens in / out | cost (USD) | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for m in &models {
        let cats: Vec<String> = m
            .by_category
            .iter()
            .map(|c| c.map_or("–".into(), |v| format!("{v:.2}")))
            .collect();
        let _ = writeln!(
            out,
            "| {} | **{:.2}** | {} | {:.0} | {} | {} / {} | {} | {} |",
            m.model,
            m.overall,
            cats.join(" | "),
            m.latency_p50_ms,
            m.ttft_p50_ms.map_or("–".into(), |t| format!("{t:.0}")),
            m.tokens.0,
            m.tokens.1,
            m.cost_usd.map_or("unknown".into(), |c| format!("{c:.6}")),
            m.errors
        );
    }
    let _ = writeln!(out, "\nPer task (score; `err` = no answer):\n");
    let _ = writeln!(
        out,
        "| task | category | {} |",
        models
            .iter()
            .map(|m| m.model.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(models.len()));
    for (task, category) in tasks {
        let cells: Vec<String> = models
            .iter()
            .map(|m| {
                results
                    .iter()
                    .find(|r| r.task == task && label(r) == m.model)
                    .map_or("–".into(), |r| match r.error {
                        Some(_) => "err".into(),
                        None => format!("{:.2}", r.score),
                    })
            })
            .collect();
        let _ = writeln!(out, "| {task} | {category} | {} |", cells.join(" | "));
    }
    out
}

const W: u32 = 900;
const H: u32 = 560;
const LEFT: i32 = 70;
const RIGHT: i32 = 620;
const TOP: i32 = 50;
const BOTTOM: i32 = 490;
const PALETTE: [Rgb888; 8] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(255, 127, 14),
    Rgb888::new(44, 160, 44),
    Rgb888::new(214, 39, 40),
    Rgb888::new(148, 103, 189),
    Rgb888::new(140, 86, 75),
    Rgb888::new(227, 119, 194),
    Rgb888::new(127, 127, 127),
];

/// An RGB canvas embedded-graphics draws on.
struct Canvas(Vec<u8>);

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(W, H)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(p, c) in pixels {
            if (0..W as i32).contains(&p.x) && (0..H as i32).contains(&p.y) {
                let i = 3 * (p.y as usize * W as usize + p.x as usize);
                self.0[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

/// The chart as PNG bytes: x = cost per task, y = overall score, circle size = median latency.
pub fn chart_png(run_id: &str, results: &[BenchResult]) -> Result<Vec<u8>, String> {
    let models = summarize(results);
    let mut c = Canvas(vec![255; (3 * W * H) as usize]);
    let ink = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let grey = PrimitiveStyle::with_stroke(Rgb888::new(200, 200, 200), 1);
    let axis = PrimitiveStyle::with_stroke(Rgb888::BLACK, 1);
    let _ = Text::new(
        &format!("llm-gateway bench {run_id}: quality vs cost (circle size = median latency)"),
        Point::new(LEFT, 25),
        MonoTextStyle::new(&FONT_7X13_BOLD, Rgb888::BLACK),
    )
    .draw(&mut c);
    let per_task = |m: &ModelSummary| m.cost_usd.unwrap_or(0.0) / m.tasks.max(1) as f64;
    let max_cost = models.iter().map(per_task).fold(0.0, f64::max).max(1e-9) * 1.15;
    let max_latency = models.iter().map(|m| m.latency_p50_ms).fold(1.0, f64::max);
    let x_of = |cost: f64| LEFT + ((cost / max_cost) * (RIGHT - LEFT) as f64) as i32;
    let y_of = |q: f64| BOTTOM - (q.clamp(0.0, 1.0) * (BOTTOM - TOP) as f64) as i32;
    for i in 0..=4 {
        let q = i as f64 / 4.0;
        let y = y_of(q);
        let _ = Line::new(Point::new(LEFT, y), Point::new(RIGHT, y))
            .into_styled(grey)
            .draw(&mut c);
        let _ = Text::new(&format!("{q:.2}"), Point::new(LEFT - 35, y + 3), ink).draw(&mut c);
        let cost = max_cost * q;
        let x = x_of(cost);
        let _ = Line::new(Point::new(x, BOTTOM), Point::new(x, BOTTOM + 4))
            .into_styled(axis)
            .draw(&mut c);
        let _ =
            Text::new(&format!("{cost:.2e}"), Point::new(x - 20, BOTTOM + 16), ink).draw(&mut c);
    }
    let _ = Line::new(Point::new(LEFT, TOP), Point::new(LEFT, BOTTOM))
        .into_styled(axis)
        .draw(&mut c);
    let _ = Line::new(Point::new(LEFT, BOTTOM), Point::new(RIGHT, BOTTOM))
        .into_styled(axis)
        .draw(&mut c);
    let _ = Text::new(
        "cost per task (USD)",
        Point::new((LEFT + RIGHT) / 2 - 55, BOTTOM + 34),
        ink,
    )
    .draw(&mut c);
    let _ = Text::new("score", Point::new(LEFT - 45, TOP - 10), ink).draw(&mut c);
    for (i, m) in models.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let d = 8 + (28.0 * m.latency_p50_ms / max_latency) as u32;
        let (x, y) = (x_of(per_task(m)), y_of(m.overall));
        let _ = Circle::with_center(Point::new(x, y), d)
            .into_styled(PrimitiveStyle::with_fill(color))
            .draw(&mut c);
        // Numbers, not names, beside the circles: models of equal cost and score coincide,
        // and the legend gives each number its name and figures.
        let label = format!("{}", i + 1);
        let _ = Text::new(&label, Point::new(x + d as i32 / 2 + 3, y + 3), ink).draw(&mut c);
        // Legend: the exact figures behind each circle, as many as fit.
        let fits = ((H as i32 - TOP - 30) / 42) as usize;
        if i >= fits {
            if i == fits {
                let more = format!("... {} more in the report", models.len() - fits);
                let _ = Text::new(&more, Point::new(RIGHT + 20, TOP + 10 + 42 * i as i32), ink)
                    .draw(&mut c);
            }
            continue;
        }
        let ly = TOP + 10 + 42 * i as i32;
        let _ = Circle::with_center(Point::new(RIGHT + 25, ly), 10)
            .into_styled(PrimitiveStyle::with_fill(color))
            .draw(&mut c);
        let name = format!("{} {}", i + 1, m.model);
        let _ = Text::new(&name, Point::new(RIGHT + 35, ly + 3), ink).draw(&mut c);
        let figures = format!(
            "score {:.2}  p50 {:.0} ms  ${:.2e}",
            m.overall,
            m.latency_p50_ms,
            per_task(m)
        );
        let _ = Text::new(&figures, Point::new(RIGHT + 35, ly + 16), ink).draw(&mut c);
    }
    let mut png = Vec::new();
    let mut enc = png::Encoder::new(&mut png, W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&c.0).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        model: &str,
        task: &str,
        category: &str,
        score: f64,
        ms: i64,
        error: bool,
    ) -> BenchResult {
        BenchResult {
            run_id: "r".into(),
            at_ms: 0,
            provider: "p".into(),
            model: model.into(),
            task: task.into(),
            category: category.into(),
            tier: "simple".into(),
            score,
            latency_ms: ms,
            ttft_ms: Some(ms / 2),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: Some(0.001),
            error: error.then(|| "boom".into()),
        }
    }

    #[test]
    fn summaries_weigh_categories_equally_and_count_errors() {
        let rs = vec![
            row("a", "k1", "knowledge", 1.0, 100, false),
            row("a", "k2", "knowledge", 1.0, 300, false),
            row("a", "c1", "code", 0.0, 200, false),
            row("b", "k1", "knowledge", 0.0, 50, true),
        ];
        let s = summarize(&rs);
        assert_eq!(s[0].model, "p/a");
        assert_eq!(
            s[0].overall, 0.5,
            "knowledge 1.0 and code 0.0 count the same"
        );
        assert_eq!(s[0].latency_p50_ms, 200.0);
        assert_eq!(s[0].tokens, (30, 15));
        assert_eq!(s[1].errors, 1);
        assert_eq!(
            (s[0].tasks, s[1].tasks),
            (3, 1),
            "errored tasks count as run"
        );
        let md = markdown("r", "today", &rs);
        assert!(
            md.contains("| p/a | **0.50** | 1.00 | 0.00 | – | – | – | 200 |"),
            "{md}"
        );
        assert!(md.contains("| k1 | knowledge | 1.00 | err |"), "{md}");
    }

    #[test]
    fn the_chart_is_a_png_of_the_expected_size() {
        let rs = vec![row("a", "k1", "knowledge", 1.0, 100, false)];
        let png = chart_png("r", &rs).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((width, height), (W, H));
    }
}
