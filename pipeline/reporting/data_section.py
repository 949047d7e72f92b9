"""The report's "Data" section: what the models were trained and tested on, from the data card
that ``prepare`` wrote (source, splits and how they were made, classes and their indices,
normalisation, padding, hashes)."""
from __future__ import annotations

from pipeline.data.prepare import load_prepared
from pipeline.data.source import DataError


def _shape(values) -> str:
    return " x ".join(str(v) for v in values)


def data_markdown(card: dict) -> str:
    n = card["num_samples"]
    lines = [
        f"**{card.get('name', card['dataset'])}** (source `{card['dataset']}`): {card['layout']} samples of "
        f"{_shape(card['input_shape'])} (channels first), {card['num_classes']} classes; "
        f"train {n['train']}, val {n['val']}, test {n['test']}.",
        "",
        f"- Splits: {card.get('splits', 'split by prepare')}.",
    ]
    norm = card.get("normalization", {"mode": "none"})
    if norm["mode"] == "none":
        lines.append("- Normalisation: none (values as read).")
    else:
        per = "per channel" if norm["mode"] == "channel" else "per input element (feature)"
        lines.append(f"- Normalisation: {per}, mean and standard deviation of the training split only.")
    if "lengths" in card:
        ln = card["lengths"]
        lines.append(f"- Series of unequal length ({ln['min']} to {ln['max']} steps): padded to {ln['padded_to']} "
                     f"with {ln['padded_with']}.")
    lines += _source_lines(card)
    classes = card.get("classes", list(range(card["num_classes"])))
    counts = card["class_counts"]
    lines += ["", "| index | label | train | val | test |", "|---|---|---|---|---|"]
    for i, label in enumerate(classes):
        lines.append(f"| {i} | {label} | {counts['train'][i]} | {counts['val'][i]} | {counts['test'][i]} |")
    lines += ["", f"Prepared data sha256 `{card['sha256'][:16]}`"
              + (f", raw data sha256 `{card['raw_sha256'][:16]}`" if "raw_sha256" in card else "") + "."]
    return "\n".join(lines) + "\n"


def _per_split(counts: dict) -> str:
    return ", ".join(f"{split} {n}" for split, n in counts.items())


def _source_lines(card: dict) -> list[str]:
    """What the source did to the data as read (the card's entries beyond the common ones)."""
    lines = []
    if card.get("files"):
        fmt = f" ({card['format']})" if card.get("format") else ""
        lines.append(f"- Read from{fmt}: " + ", ".join(f"{s} `{f}`" for s, f in card["files"].items()) + ".")
    if card.get("one_hot"):
        lines.append("- Text columns one-hot encoded (a 0/1 feature per category of the training file): "
                     + ", ".join(f"{c} ({len(v)} categories)" for c, v in card["one_hot"].items()) + ".")
    for split, columns in (card.get("unseen_categories") or {}).items():
        lines.append(f"- Values of the {split} file not among the training file's categories (no category set): "
                     + ", ".join(f"{c} {n}" for c, n in columns.items()) + ".")
    if card.get("columns_left_out"):
        lines.append(f"- Columns left out (blank header, a written row index): {', '.join(card['columns_left_out'])}.")
    if any((card.get("rows_dropped_for_missing_values") or {}).values()):
        lines.append(f"- Rows dropped for missing values: {_per_split(card['rows_dropped_for_missing_values'])}.")
    if any((card.get("missing_values_interpolated") or {}).values()):
        lines.append(f"- Missing values interpolated along time: {_per_split(card['missing_values_interpolated'])}.")
    return lines


def data_section_text(dataset: str) -> str | None:
    """The section's Markdown for the prepared ``dataset``; None where nothing is prepared."""
    try:
        card = load_prepared(dataset, arrays=False).card
    except DataError:
        return None
    return data_markdown(card)
