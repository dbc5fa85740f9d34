"""Names and orders the paper uses: VTAB-1k tasks (registry name -> label, group, classes)
and methods (registry name -> label), so every table and plot lists them the same way."""
from __future__ import annotations

# The paper's column order (Tables 1-2), grouped Natural / Specialized / Structured.
VTAB_TASKS: dict[str, tuple[str, str, int]] = {
    "cifar100": ("CIFAR-100", "Natural", 100),
    "caltech101": ("Caltech101", "Natural", 102),
    "dtd": ("DTD", "Natural", 47),
    "flowers102": ("Flowers102", "Natural", 102),
    "pets": ("Pets", "Natural", 37),
    "svhn": ("SVHN", "Natural", 10),
    "sun397": ("Sun397", "Natural", 397),
    "camelyon": ("Camelyon", "Specialized", 2),
    "eurosat": ("EuroSAT", "Specialized", 10),
    "resisc45": ("Resisc45", "Specialized", 45),
    "retinopathy": ("Retinopathy", "Specialized", 5),
    "clevr_count": ("Clevr-Count", "Structured", 8),
    "clevr_dist": ("Clevr-Dist", "Structured", 6),
    "dmlab": ("DMLab", "Structured", 6),
    "kitti_dist": ("KITTI-Dist", "Structured", 4),
    "dsprites_loc": ("dSpr-Loc", "Structured", 16),
    "dsprites_ori": ("dSpr-Ori", "Structured", 16),
    "smallnorb_azim": ("sNORB-Azim", "Structured", 18),
    "smallnorb_elev": ("sNORB-Elev", "Structured", 9),
}
VTAB_GROUPS = ("Natural", "Specialized", "Structured")
# Tasks outside VTAB (the offline ones, imagefolder:...) are never mixed into a VTAB group:
# a procedural dSprites is not dSprites, and the paper's means are over the 19 VTAB tasks.
OTHER_GROUP = "Offline"
GROUP_ORDER = (*VTAB_GROUPS, OTHER_GROUP)

# Rows of the paper's tables, in its order; head2toe_layers is the layers-vs-features ablation.
METHOD_LABELS: dict[str, str] = {
    "linear": "Linear",
    "all_l2": "All-ℓ2",
    "all_l1": "All-ℓ1",
    "all_group": "All-ℓ2,1",
    "head2toe": "Head2Toe",
    "scratch": "Scratch",
    "finetune": "Fine-tuning",
    "head2toe_ft": "Head2Toe-FT",
    "head2toe_ft_plus": "Head2Toe-FT+",
    "head2toe_layers": "Head2Toe (layers)",
}
TABLE_METHODS = ("linear", "all_l2", "all_l1", "all_group", "head2toe", "scratch", "finetune", "head2toe_ft")

# Backbones the paper reports, by this project's registry name (and timm aliases).
PUBLISHED_BACKBONES = {"resnet50": "resnet50", "vit_b16": "vit_b16", "vit_base_patch16_224": "vit_b16"}


def task_label(task: str) -> str:
    return VTAB_TASKS[task][0] if task in VTAB_TASKS else task


def task_group(task: str) -> str:
    return VTAB_TASKS[task][1] if task in VTAB_TASKS else OTHER_GROUP


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def order_tasks(tasks) -> list[str]:
    """The paper's order for VTAB tasks, then the others alphabetically."""
    vtab = [t for t in VTAB_TASKS if t in set(tasks)]
    return vtab + sorted(set(tasks) - set(vtab))


def order_methods(methods) -> list[str]:
    known = [m for m in METHOD_LABELS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def num_classes(task: str) -> int | None:
    """Classes of a task: VTAB's from the table above, others from the task registry."""
    if task in VTAB_TASKS:
        return VTAB_TASKS[task][2]
    try:
        from head2toe.tasks import get_task

        return int(get_task(task).num_classes)
    except Exception:  # an unknown or unreadable task (e.g. an imagefolder path gone): no cost row
        return None
