"""The whole analysis of one sweep as files: report.html (self-contained: tables and PNGs
embedded as base64), report.md (figures linked), CSVs, LaTeX tables and figure PNGs."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import ablations, plots
from analysis.affinity import affinity_note, domain_affinity, gain_vs_affinity
from analysis.cost import cost_table, paper_cost_check
from analysis.multi_backbone import backbone_table
from analysis.overlap import layer_share, pairwise_overlap, task_selections
from analysis.published import compare, paper_rows, side_by_side, stand_in_rows, why_no_comparison
from analysis.runs import DEFAULT_EXPERIMENT, final_runs, load_runs, load_selections, tidy
from analysis.tables import PaperTable, paper_tables

CSS = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap}th{background:#f3f3f3}td.best{font-weight:bold}
table.paper thead tr:first-child th{text-align:center}
.note{color:#555;font-size:13px}img{max-width:100%;border:1px solid #eee;margin:.5em 0}.scroll{overflow-x:auto}"""


@dataclass
class Section:
    """A titled part of the report: notes, tables shown and saved (CSV name -> frame), tables only
    saved, figures (file stem -> Figure) and rendered paper tables."""

    title: str
    notes: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    csv_only: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    paper_tables: list[PaperTable] = field(default_factory=list)


def _figures(section: Section, **figs: Figure | None) -> None:
    section.figures.update({k: f for k, f in figs.items() if f is not None})


def build_sections(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> list[Section]:
    """Everything the report shows, computed from the experiment's runs."""
    all_runs = load_runs(tracking_uri, experiment, every_run=True)  # one query; retries and failures kept
    runs = tidy(all_runs)
    selections = load_selections(tracking_uri, runs)
    tables = paper_tables(runs)
    return [
        _runs_section(tracking_uri, experiment, runs, all_runs), _tables_section(tables), _versus_section(tables),
        _affinity_section(tables), _layers_section(runs), _overlap_section(runs, selections),
        _bitter_section(runs, selections), *_multi_backbone_section(runs, selections), _cost_section(runs),
    ]


def _multi_backbone_section(runs: pd.DataFrame, selections: dict[str, dict]) -> list[Section]:
    """Single backbones against their union (only when the sweep has a composite backbone)."""
    table = backbone_table(runs, selections)
    if table.empty:
        return []
    return [Section("Several backbones at once", tables={"multi_backbone": table}, notes=[
        "Head2Toe per task on each single backbone and on composites (a+b: the union of the members' candidate "
        "features, docs/multi_backbone.md): test accuracy (%), candidate and kept features, and the share of a "
        "composite's kept features each member contributed."])]


def _runs_section(tracking_uri: str, experiment: str, runs: pd.DataFrame, all_runs: pd.DataFrame) -> Section:
    return Section("Runs", notes=[
        f"Experiment <code>{html.escape(experiment)}</code> at <code>{html.escape(tracking_uri)}</code>.",
        f"{len(runs)} trials counted once each (newest FINISHED run per trial key; {len(all_runs) - len(runs)} other "
        f"runs: failed, unfinished or superseded retries). {len(final_runs(runs))} final (test) trials; "
        f"backbones: {', '.join(sorted(set(runs['backbone'])))}; methods: {', '.join(sorted(set(runs['method'])))}.",
    ], csv_only={"runs": runs})


def _tables_section(tables: dict[str, PaperTable]) -> Section:
    section = Section("Paper tables", paper_tables=list(tables.values()),
                      tables={f"table_{b}": t.long() for b, t in tables.items()})
    if not tables:
        section.notes.append("No final trials yet: the tables need the sweep's final stage.")
    return section


def _versus_section(tables: dict[str, PaperTable]) -> Section:
    comparison = pd.concat([compare(t) for t in tables.values()] or [pd.DataFrame()], ignore_index=True)
    section = Section("Ours vs the paper", csv_only={"ours_vs_paper": comparison},
                      tables={f"ours_vs_paper_{b}": side_by_side(comparison, b) for b in tables if not comparison.empty})
    if not comparison.empty:
        section.notes.append("Per method and VTAB task: our mean over seeds vs the published number (difference, pp).")
    else:
        section.notes += [why_no_comparison(tables),
                          "paper_rows: the published rows this sweep's methods would be compared with (the paper's "
                          "VTAB-1k means; analysis/published/*.csv holds every task's cell). stand_ins: for "
                          "orientation only, our accuracy on each stand-in next to the paper's ResNet-50 cell of the "
                          "VTAB task it imitates (different images and backbone, so not a comparison)."]
        section.tables.update({"paper_rows": paper_rows(tables), "stand_ins": stand_in_rows(tables)})
    _figures(section, ours_vs_paper=plots.ours_vs_paper_plot(comparison))
    return section


def _affinity_section(tables: dict[str, PaperTable]) -> Section:
    affinity = pd.concat([domain_affinity(t) for t in tables.values()] or [pd.DataFrame(columns=["scratch_source"])],
                         ignore_index=True)
    section = Section("Domain affinity", tables={"domain_affinity": affinity}, notes=[
        "Affinity = Acc(Linear) − Acc(Scratch); gain = Acc(Head2Toe) − Acc(Linear).", affinity_note(affinity),
        gain_vs_affinity(affinity)])
    _figures(section, affinity=plots.affinity_plot(affinity))
    return section


def _layers_section(runs: pd.DataFrame) -> Section:
    lvf = ablations.layers_vs_features(runs)
    section = Section("Layers vs features", tables={"layers_vs_features": lvf}, notes=[
        "Best CV accuracy of head2toe (select features) and head2toe_layers (select layers by mean score, same number of features) at each keep fraction "
        "both were cross-validated at." if not lvf.empty else "Needs CV trials of both head2toe and head2toe_layers at a "
        "common keep fraction (configs/ablation_layers_vs_features.yaml).", ablations.features_vs_layers_summary(lvf)])
    _figures(section, layers_vs_features=plots.layers_vs_features_plot(lvf))
    return section


def _overlap_section(runs: pd.DataFrame, selections: dict[str, dict]) -> Section:
    section = Section("Feature overlap", notes=[
        "Between tasks, from the final Head2Toe selections (lowest seed; the most common target size): "
        "overlap = |A∩B| / min(|A|,|B|), IoU = |A∩B| / |A∪B|; and the share of each task's kept features per layer "
        "(layers in network order, top to bottom). The paper finds under 20% intersection between tasks."])
    for bb in sorted(set(final_runs(runs)["backbone"])):
        chosen = task_selections(runs, selections, bb)
        if not chosen:
            continue
        coef, jac = pairwise_overlap(chosen)
        share = layer_share(chosen)
        section.csv_only.update({f"overlap_{bb}": coef, f"iou_{bb}": jac, f"layer_share_{bb}": share})
        if len(chosen) > 1:
            off = ~np.eye(len(chosen), dtype=bool)
            section.notes.append(f"{bb}: mean pairwise overlap {np.nanmean(coef.to_numpy()[off]):.2f}, "
                                 f"mean IoU {np.nanmean(jac.to_numpy()[off]):.2f} over {len(chosen)} tasks.")
            _figures(section, **{f"overlap_{bb}": plots.heatmap(coef, f"{bb}: |A∩B| / min(|A|,|B|)", "overlap"),
                                 f"iou_{bb}": plots.heatmap(jac, f"{bb}: IoU of kept features", "IoU")})
        _figures(section, **{f"layer_share_{bb}": plots.heatmap(share.T, f"{bb}: share of kept features per layer", "share",
                                                                vmax=None, annotate=False)})
    if not section.csv_only:
        section.notes.append("No selection artefacts (selection/kept_indices.json of final head2toe trials) yet.")
    return section


def _bitter_section(runs: pd.DataFrame, selections: dict[str, dict]) -> Section:
    sizes = ablations.accuracy_vs_target_size(runs)
    used = ablations.accuracy_vs_layers(runs, selections)
    section = Section("Bitter lesson: more layers, more features", tables={"accuracy_vs_target_size": sizes},
                      csv_only={"accuracy_vs_layers": used})
    size_fig = plots.target_size_plot(sizes)
    section.notes.append("Accuracy vs target size: best CV accuracy per target size (every size is pooled from the same "
                         "forward pass: extraction runs the backbone once per image). " + ablations.target_size_summary(sizes)
                         if size_fig is not None else
                         "Accuracy vs target size needs CV trials over two or more target sizes "
                         "(configs/ablation_target_size.yaml); this sweep has one per task.")
    section.notes.append("Accuracy vs layers: test accuracy against the number of layers the final selection draws from.")
    _figures(section, target_size=size_fig, layers_used=plots.layers_used_plot(used))
    return section


def _cost_section(runs: pd.DataFrame) -> Section:
    cost = cost_table(runs)
    check = paper_cost_check()
    section = Section("Cost", tables={"cost": cost, "paper_cost_check": check}, notes=[
        "Head2Toe relative to fine-tuning and Linear: size = k·C + F/32 (kept weights + a bit mask), FLOPs = n·FWD + "
        "1.18·2·S·B·F·C vs fine-tuning's 3·S·B·FWD (S=500, B=128, n=1000; see analysis.cost).",
        f"The formula reproduces {int(check['slide_consistent'].sum())} of {len(check)} rows of the paper's cost table as "
        "printed in the slides; the others have cells that do not fit any single formula (shifted or zero in the slide text)."])
    _figures(section, cost=plots.cost_plot(cost))
    return section


def _markdown_table(frame: pd.DataFrame) -> str:
    shown = frame if isinstance(frame.index, pd.RangeIndex) else frame.reset_index()
    lines = ["| " + " | ".join(str(c) for c in shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


SHOWN_INLINE = 40  # longer frames (e.g. every run) live in their CSV only


def write_report(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT, out: str | Path = "out/report") -> Path:
    """Write report.html, report.md, CSVs (csv/), LaTeX and Markdown tables (tables/) and PNGs
    (figures/) to `out`; returns the path of report.html. Raises runs.NoRunsError (nothing
    written) when the store or experiment has no trials."""
    out = Path(out)
    sections = build_sections(tracking_uri, experiment)
    for sub in ("csv", "figures", "tables"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body, md = [], [f"# Head2Toe report: {experiment}\n", f"Generated {stamp}.\n"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        md.append(f"\n## {s.title}\n")
        body += [f"<p class='note'>{n}</p>" for n in s.notes if n]
        md += [f"{_strip_tags(n)}\n" for n in s.notes if n]
        for t in s.paper_tables:
            body.append(f"<h3>{html.escape(t.backbone)}</h3><div class='scroll'>{t.to_html()}</div>")
            md.append(f"\n### {t.backbone}\n\n{t.to_markdown()}")
            (out / "tables" / f"{t.backbone}.tex").write_text(t.to_latex())
            (out / "tables" / f"{t.backbone}.md").write_text(t.to_markdown())
        for name, frame in s.csv_only.items():
            frame.to_csv(out / "csv" / f"{name}.csv", index=False)
            link = f"csv/{name}.csv"
            body.append(f"<p class='note'>{html.escape(name)}: {len(frame)} rows in <a href='{link}'>{link}</a></p>")
            md.append(f"{name}: {len(frame)} rows in [{link}]({link})\n")
        for name, frame in s.tables.items():
            frame.to_csv(out / "csv" / f"{name}.csv", index=not isinstance(frame.index, pd.RangeIndex))
            if s.paper_tables or frame.empty:
                continue  # the paper tables are shown rendered; empty frames say nothing
            link = f"csv/{name}.csv"
            if len(frame) > SHOWN_INLINE:
                body.append(f"<p class='note'>{html.escape(name)}: {len(frame)} rows in <a href='{link}'>{link}</a></p>")
                md.append(f"{name}: {len(frame)} rows in [{link}]({link})\n")
                continue
            body.append(f"<h4>{html.escape(name)}</h4><div class='scroll'>"
                        f"{frame.to_html(float_format=lambda v: f'{v:.4g}', border=0, na_rep='–', index=not isinstance(frame.index, pd.RangeIndex))}</div>")
            md.append(f"\n**{name}** ([CSV]({link}))\n\n{_markdown_table(frame)}")
        for name, fig in s.figures.items():
            png = plots.to_png(fig)
            (out / "figures" / f"{name}.png").write_bytes(png)
            data = base64.b64encode(png).decode()
            body.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'><figcaption>{html.escape(name)}</figcaption></figure>")
            md.append(f"\n![{name}](figures/{name}.png)\n")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Head2Toe report: {html.escape(experiment)}</title>"
            f"<style>{CSS}</style></head><body><h1>Head2Toe report: {html.escape(experiment)}</h1><p class='note'>Generated {stamp}.</p>"
            + "\n".join(body) + "</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return out / "report.html"


def _strip_tags(text: str) -> str:
    return text.replace("<code>", "`").replace("</code>", "`")
