"""A self-contained HTML report of one pipeline run (``RUN/report/index.html``).

:func:`write_report` reads what the pipeline left in a run folder::

    RUN/pipeline.json                 config, versions, stage timings, dataset
    RUN/models/<type>/model.pt        DST checkpoints (reference, loss history)
    RUN/generated/data/part-*.parquet generated samples (schema: docs/design.md)
    RUN/generated/summary.json        generation summary
    RUN/seg/history.jsonl             segmentation training / evaluation history
    RUN/eval/eval.json, eval.png      evaluation scores and Figure-7 overlays

    RUN/eval-ref/eval.json            the same segmenter trained without generated samples (baseline)

and writes one HTML page with every image embedded as a ``data:`` URI (no script, no
external resource), plus the same PNGs next to it. Sections:

1. the headline (:mod:`.headline`): pixel F1 (overall, macro, per type) on the real test split
   of the segmenter trained with the generated samples beside the one trained without, and a
   contact sheet of generated samples, each beside its label L;
2. per defect type a row like the paper's Figure 3 (Wei et al., §3.1): reference H with
   its mask M outlined, background S with the area L outlined, histogram matching y',
   DST output ŷ, and both outputs zoomed on L;
3. the generated samples per type and generator;
4. loss curves: the four DST terms and their total per type, segmentation loss and F1;
5. the evaluation (paper eq. 8): pixel P/R/F1/IoU overall and per type, image-level
   detection and false alarms, and the Figure-7 overlays;
6. stage timings and the generation summary;
7. the run: folder, dataset, date, versions, and the exact config (folded).

Any part may be missing: its section says "not run" instead of failing; a part that is
present but cannot be read says so in its section, and the rest of the report is kept.
Pure python/numpy/matplotlib/torch (no Ray). Modules: :mod:`.html` (page, tables),
:mod:`.images`, :mod:`.figure3` (section 2), :mod:`.sections` (the others), :mod:`.tables`
(markdown tables of the experiments and searches).
"""

from __future__ import annotations

from pathlib import Path

from dstray.report.figure3 import figure3_section, read_checkpoints
from dstray.report.html import CSS, Page, esc, guard
from dstray.report.headline import headline_section
from dstray.report.sections import (contact_section, counts_section, eval_section, losses_section, read_pipeline,
                                    run_section, timings_section)

_OWN_FILES = ("fig3-*.png", "contact-*.png", "dst-losses.png", "seg-history.png", "eval.png")


def write_report(run_dir: str | Path, *, out_dir: str | Path | None = None, contact_sheet_n: int = 24,
                 seed: int = 0) -> Path:
    """Write the HTML report of the run in ``run_dir``; returns the path of ``index.html``.

    Args:
        run_dir: the run folder (layout in the module docstring; every part optional).
        out_dir: where ``index.html`` and its PNGs go; default ``run_dir/report``.
        contact_sheet_n: number of generated samples on the contact sheet.
        seed: seeds the choice of the Figure-3 background, its areas L and the contact-sheet
            samples, so the same run and seed give the same report (but for its date).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist (give the folder a pipeline run wrote)")
    out = Path(out_dir) if out_dir is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    for pattern in _OWN_FILES:  # images of an earlier report of this folder
        for old in out.glob(pattern):
            old.unlink()
    page = Page(out)
    pipeline, pipeline_note = read_pipeline(run)
    checkpoints = read_checkpoints(run)
    sections = [
        ("headline", "Does generating defects help? Pixel F1 with and without generated samples",
         lambda: headline_section(page, run, pipeline,
                                  guard("contact sheet", lambda: contact_section(page, run, contact_sheet_n, seed)))),
        ("figure3", "Defect style transfer per type (Figure 3)",
         lambda: figure3_section(page, run, pipeline, checkpoints, seed)),
        ("generated", "Generated samples per type", lambda: counts_section(run)),
        ("losses", "Loss curves", lambda: losses_section(page, run, pipeline, checkpoints)),
        ("evaluation", "Evaluation of the segmenter trained with generated samples (Figure 7)",
         lambda: eval_section(page, run, pipeline)),
        ("timings", "Stage timings and generation summary", lambda: timings_section(run, pipeline)),
        ("run", "Run and config", lambda: run_section(run, pipeline, pipeline_note)),
    ]
    body = []
    for anchor, title, build in sections:
        body.append(f'<h2 id="{anchor}">{esc(title)}</h2>')
        body.append(guard(title, build))
    nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>dstray report: {esc(run.resolve().name)}</title><style>{CSS}</style></head><body>\n"
        f"<h1>dstray run report: {esc(run.resolve().name)}</h1>\n<nav>{nav}</nav>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(doc, encoding="utf-8")
    return index
