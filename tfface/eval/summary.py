"""One-screen text summaries of ``tfface-eval`` reports (verification and 1:N identification)."""

from __future__ import annotations


def far_label(key: str) -> str:
    """``'0.001'`` -> ``'1e-03'``."""
    return f"{float(key):.0e}"


def format_summary(report: dict) -> str:
    """A one-screen, human-readable table of a tfface-eval report."""
    width, rule = 40, "-" * 78
    distance = report.get("distance", "cosine")
    rows = [
        (f"accuracy ({report['n_folds']}-fold, mean ± std)",
         f"{100 * report['accuracy_mean']:.2f}% ± {100 * report['accuracy_std']:.2f}%"),
        ("best-threshold accuracy (optimistic)",
         f"{100 * report['best_threshold_accuracy']:.2f}%  (threshold {report['best_threshold']:.4f})"),
        ("ROC AUC", f"{report['auc']:.4f}"),
        ("EER", f"{100 * report['eer']:.2f}%  (threshold {report['eer_threshold']:.4f})"),
    ]
    for key, tar in report["tar_at_far"].items():
        rows.append((f"TAR @ FAR={far_label(key)}",
                     f"{100 * tar:.2f}%  (threshold {report['tar_at_far_thresholds'][key]:.4f})"))
    size = report.get("image_size")
    size = f" at {size[0]}x{size[1]}" if size else ""
    n_diff = report["num_different"]
    lines = [
        f"tfface-eval  model: {report.get('model', '?')}",
        f"pairs: {report.get('pairs', '?')}",
        f"{report['num_pairs']} pairs ({report['num_same']} same / {n_diff} different), "
        f"{report.get('num_images', '?')} images{size}, flip fusion: {report.get('flip_fusion', '?')}, "
        f"{distance}" + (f", PCA to {report['pca_dim']} dims on the training folds" if report.get("pca_dim") else ""),
        rule,
    ]
    lines += [f"{name:<{width}}{value}" for name, value in rows]
    if report["tar_at_far"]:
        lines.append(f"TAR@FAR: exact ROC points, no interpolation; FAR < 1/{n_diff} not measurable")
    else:
        lines.append(f"TAR@FAR: no FAR measurable with {n_diff} different pairs (needs FAR >= 1/{n_diff})")
    if report.get("decision"):
        lines.append(f"thresholds: {report['decision']}")
    lines.append(rule)
    return "\n".join(lines)


def format_identification_summary(report: dict) -> str:
    """A one-screen table of a 1:N report."""
    width, rule = 40, "-" * 78
    closed = report["closed_set"]
    lines = [f"tfface-eval (1:N)  model: {report.get('model', '?')}",
             f"gallery: {report['num_gallery_identities']} identities, {report['num_gallery_images']} images; "
             f"probes: {report['num_probes']} mated, {report['num_nonmated_probes']} non-mated; "
             f"flip fusion: {report.get('flip_fusion', '?')}", rule]
    for k, acc in closed["rank_accuracy"].items():
        lines.append(f"{f'closed-set rank-{k}':<{width}}{100 * acc:.2f}%")
    open_set = report.get("open_set")
    if open_set:
        for key, tpir in open_set["tpir_at_fpir"].items():
            lines.append(f"{f'TPIR @ FPIR={far_label(key)}':<{width}}{100 * tpir:.2f}%  "
                         f"(threshold {open_set['tpir_at_fpir_thresholds'][key]:.4f})")
        if not open_set["tpir_at_fpir"]:
            lines.append(f"TPIR@FPIR: no FPIR measurable with {report['num_nonmated_probes']} non-mated probes")
    curve = report.get("distractor_curve")
    if curve:
        lines.append(f"MegaFace-style rank-1 vs distractors ({curve['num_pairs']} probe/mate pairs):")
        lines.append("  " + "  ".join(f"{int(n):,}: {100 * r:.2f}%" for n, r in curve["rank1"].items()))
    skipped = report.get("num_skipped_files", {})
    if any(skipped.values()):
        lines.append("skipped unreadable files: " + ", ".join(f"{k} {v}" for k, v in skipped.items() if v) +
                     " (listed in the JSON report)")
    lines.append(rule)
    return "\n".join(lines)
