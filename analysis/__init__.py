"""Analysis of Head2Toe sweeps: MLflow runs -> tidy frames -> the paper's tables, published
numbers side by side, domain affinity, ablations, feature overlap, cost, plots and a report.

After a sweep, `write_report(tracking_uri, experiment, out)` writes everything `h2t report`
does. No Ray here: this runs on a laptop against a copied `mlflow.db` or a tracking server.

May import: head2toe (the task registry: groups and class counts), MLflow, pandas,
matplotlib; never Ray, orchestrator or jobs.
"""
from analysis.ablations import accuracy_vs_layers, accuracy_vs_target_size, layers_vs_features
from analysis.affinity import domain_affinity
from analysis.cost import cost_table, head2toe_cost, paper_cost_check
from analysis.overlap import layer_share, pairwise_overlap, task_selections
from analysis.published import compare, published_cost, published_table
from analysis.report import build_sections, write_report
from analysis.runs import DEFAULT_EXPERIMENT, NoRunsError, final_runs, keep_fraction_long, load_runs, load_selections
from analysis.tables import PaperTable, paper_table, paper_tables

__all__ = [
    "DEFAULT_EXPERIMENT", "NoRunsError", "PaperTable", "accuracy_vs_layers", "accuracy_vs_target_size", "build_sections",
    "compare", "cost_table", "domain_affinity", "final_runs", "head2toe_cost", "keep_fraction_long", "layer_share",
    "layers_vs_features", "load_runs", "load_selections", "pairwise_overlap", "paper_cost_check", "paper_table",
    "paper_tables", "published_cost", "published_table", "task_selections", "write_report",
]
