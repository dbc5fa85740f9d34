"""The paper's results tables (methods x tasks, mean ± std over seeds) and their renderings."""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.catalog import GROUP_ORDER, TABLE_METHODS, order_methods, order_tasks, method_label, task_group, task_label
from analysis.runs import final_runs

MEAN = "Mean"


@dataclass
class PaperTable:
    """One backbone's table. `mean`, `std`, `n` are methods x tasks (+ the Mean column), in
    percent; `mean_tasks[m]` is how many task columns the row's Mean averages."""

    backbone: str
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    mean_tasks: pd.Series

    @property
    def tasks(self) -> list[str]:
        return [c for c in self.mean.columns if c != MEAN]

    def best(self) -> pd.DataFrame:
        """True where a cell is the column's best (ties all marked)."""
        rounded = self.mean.round(1)
        return rounded.eq(rounded.max(axis=0), axis=1) & rounded.notna()

    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame with (group, task) columns and 'mean ± std' strings."""
        cells = self.mean.copy().astype(object)
        for m in self.mean.index:
            for t in self.mean.columns:
                cells.loc[m, t] = self._cell(m, t)
        cells.index = [method_label(m) for m in cells.index]
        cells.columns = pd.MultiIndex.from_tuples([self._header(t) for t in cells.columns], names=["group", "task"])
        return cells

    def long(self) -> pd.DataFrame:
        """One row per (method, task): mean, std, n_seeds (what the CSV holds)."""
        out = pd.concat({"mean": self.mean.stack(), "std": self.std.stack(), "n_seeds": self.n.stack()}, axis=1)
        out.index.names = ["method", "task"]
        return out.reset_index().assign(backbone=self.backbone)

    def _header(self, task: str) -> tuple[str, str]:
        return ("", MEAN) if task == MEAN else (task_group(task), task_label(task))

    def _cell(self, method: str, task: str) -> str:
        mean, std = self.mean.loc[method, task], self.std.loc[method, task]
        if pd.isna(mean):
            return "–"
        text = f"{mean:.1f}"
        if task == MEAN:
            k = int(self.mean_tasks[method])
            return text if k == len(self.tasks) else f"{text}†"
        return text if pd.isna(std) else f"{text} ± {std:.1f}"

    def _footnote(self) -> str:
        partial = [f"{method_label(m)} ({int(k)} of {len(self.tasks)})" for m, k in self.mean_tasks.items() if k < len(self.tasks)]
        note = "Test accuracy (%), mean ± std (sample) over seeds; best per column in bold."
        return note + (f" † Mean over the tasks the row has: {', '.join(partial)}." if partial else "")

    def _groups(self) -> list[tuple[str, int]]:
        spans: list[tuple[str, int]] = []
        for t in self.mean.columns:
            g = "" if t == MEAN else task_group(t)
            if spans and spans[-1][0] == g:
                spans[-1] = (g, spans[-1][1] + 1)
            else:
                spans.append((g, 1))
        return spans

    def to_markdown(self) -> str:
        """Pipe table; the group is prefixed to each task header (Markdown has no column spans)."""
        best = self.best()
        head = ["Method"] + [f"{task_group(t)}: {task_label(t)}" if t != MEAN else MEAN for t in self.mean.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in self.mean.index:
            cells = [f"**{self._cell(m, t)}**" if best.loc[m, t] else self._cell(m, t) for t in self.mean.columns]
            lines.append("| " + " | ".join([method_label(m)] + cells) + " |")
        return "\n".join(lines) + f"\n\n{self._footnote()}\n"

    def to_latex(self) -> str:
        """A tabular with the group headers as \\multicolumn spans (needs \\usepackage{booktabs})."""
        best = self.best()

        def esc(s: str) -> str:
            return s.replace("ℓ", r"$\ell$").replace("_", r"\_").replace("±", r"$\pm$").replace("†", r"$^\dagger$")

        cols = len(self.mean.columns)
        groups = " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{g}}}" for g, n in self._groups())
        names = " & ".join(esc(task_label(t)) if t != MEAN else MEAN for t in self.mean.columns)
        body = []
        for m in self.mean.index:
            cells = [rf"\textbf{{{esc(self._cell(m, t))}}}" if best.loc[m, t] else esc(self._cell(m, t)) for t in self.mean.columns]
            body.append(" & ".join([esc(method_label(m))] + cells) + r" \\")
        return "\n".join([
            r"\begin{tabular}{l" + "c" * cols + "}", r"\toprule", f" & {groups} \\\\", f"Method & {names} \\\\", r"\midrule",
            *body, r"\bottomrule", r"\end{tabular}", f"% {self._footnote()}",
        ]) + "\n"

    def to_html(self) -> str:
        """A <table class="paper"> with a group header row; best cells have class "best"."""
        best = self.best()
        groups = "".join(f'<th colspan="{n}">{html.escape(g)}</th>' for g, n in self._groups())
        names = "".join(f"<th>{html.escape(task_label(t) if t != MEAN else MEAN)}</th>" for t in self.mean.columns)
        rows = []
        for m in self.mean.index:
            cells = "".join(
                f'<td class="best">{html.escape(self._cell(m, t))}</td>' if best.loc[m, t] else f"<td>{html.escape(self._cell(m, t))}</td>"
                for t in self.mean.columns)
            rows.append(f"<tr><th>{html.escape(method_label(m))}</th>{cells}</tr>")
        return (f'<table class="paper"><thead><tr><th></th>{groups}</tr><tr><th>Method</th>{names}</tr></thead>'
                f"<tbody>{''.join(rows)}</tbody></table><p class='note'>{html.escape(self._footnote())}</p>")


def paper_table(runs: pd.DataFrame, backbone: str, methods=None) -> PaperTable:
    """Final-run test accuracy of `backbone`, mean and std over seeds per method and task.

    Rows: `methods` (default: the paper's rows that have runs), in the paper's order;
    columns: VTAB tasks in the paper's order by group, then other tasks (group Offline), then
    Mean (the average of the row's task means).
    """
    final = final_runs(runs)
    final = final[final["backbone"] == backbone]
    if methods is None:
        methods = [m for m in TABLE_METHODS if m in set(final["method"])]
    final = final[final["method"].isin(methods)]
    acc = final.assign(acc=100 * final["test_accuracy"].astype(float))
    # average repeated runs of one seed first (e.g. several hp sets), so each seed counts once
    per_seed = acc.groupby(["method", "task", "seed"], dropna=False)["acc"].mean()
    stats = per_seed.groupby(["method", "task"]).agg(["mean", "std", "count"])
    tasks = sorted(order_tasks(set(final["task"])), key=lambda t: GROUP_ORDER.index(task_group(t)))
    rows = order_methods(methods)
    mean = stats["mean"].unstack().reindex(index=rows, columns=tasks)
    std = stats["std"].unstack().reindex(index=rows, columns=tasks)
    n = stats["count"].unstack().reindex(index=rows, columns=tasks).fillna(0).astype(int)
    mean_tasks = mean.notna().sum(axis=1)
    mean[MEAN] = mean.mean(axis=1)
    std[MEAN] = np.nan
    n[MEAN] = n.min(axis=1)
    return PaperTable(backbone, mean.astype(float), std.astype(float), n, mean_tasks)


def paper_tables(runs: pd.DataFrame) -> dict[str, PaperTable]:
    """One table per backbone that has final runs of the paper's methods."""
    tables = {b: paper_table(runs, b) for b in sorted(set(final_runs(runs)["backbone"]))}
    return {b: t for b, t in tables.items() if len(t.mean.index)}
