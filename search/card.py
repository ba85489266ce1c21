"""Model cards: the ``README.md`` that ``export`` writes into every ``OUT/rank-N`` and ``ensemble``
into its ``OUT``, in the Hugging Face model-card format.

The YAML front matter holds ``base_model`` (when the encoder is a hub model), ``tags``,
``pipeline_tag`` and a ``model-index``: one result per task and set of dev scores, each labelled
with the dev rows its numbers came from, in ``dataset.config``:

    selection-subset   the tune.eval_subset rows per task that the search compared trials on
    full-dev           the whole dev sets

and ``dataset.args.used_for_selection``: whether a choice was made on those very scores (the
selection subset always; the full dev sets for an ensemble's members and weights, for finalists
ranked on them, or when the search compared trials on every dev row). The course's test sets have
no labels, so no score here is held out from every choice; the card says so.

The body gives the scores as a table, the sampled settings, how to run ``mtbert-train predict`` and
how to load the encoder with ``transformers``, the Quora caveat of the default encoder, and the
search it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"
HUB_NAMES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}  # mtbert's names of hub models
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# task -> (Hugging Face task type, what it is, dataset type, dataset name, [(metric type, score key, words)])
TASKS = {
    "sst": ("text-classification", "Sentiment (SST, 5 classes)", "sst", "SST (the course's dev set)",
            [("accuracy", "sst_acc", "accuracy")]),
    "para": ("text-classification", "Paraphrase detection (Quora question pairs)", "quora",
             "Quora (the course's dev set)", [("accuracy", "para_acc", "accuracy"), ("f1", "para_f1", "F1")]),
    "sts": ("sentence-similarity", "Semantic similarity (STS, 0-5)", "sts", "STS (the course's dev set)",
            [("pearsonr", "sts_pearson", "Pearson r"), ("spearmanr", "sts_spearman", "Spearman rho")]),
}  # fmt: skip
TAGS = ["mtbert-search", "multi-task", "bert", "sentiment-analysis", "paraphrase-detection", "semantic-similarity"]
NO_HELD_OUT = "The course's test sets have no labels here: no score above is held out from every choice."


@dataclass
class DevScores:
    """One set of scores with where they came from."""

    config: str  # selection-subset or full-dev
    values: dict[str, float]
    words: str  # where they came from, in a sentence for the body
    used_for_selection: bool
    rows: int | dict[str, int] | None = None  # dev rows (per task) they were computed on

    @property
    def column(self) -> str:
        return "selection subset" if self.config == "selection-subset" else "full dev"


def base_model(encoder: str) -> str | None:
    """The hub name of the encoder a model was fine-tuned from; None for a local folder or the random tiny one."""
    if encoder in HUB_NAMES:
        return HUB_NAMES[encoder]
    if encoder == "tiny" or encoder.startswith((".", "/", "~")) or Path(encoder).expanduser().exists():
        return None
    return encoder


def model_index(name: str, scores: list[DevScores]) -> list[dict[str, Any]]:
    results = []
    for s in scores:
        for task, (task_type, task_name, data_type, data_name, metrics) in TASKS.items():
            entries = [
                {"type": kind, "value": float(s.values[key]), "name": f"{words} ({s.column})"}
                for kind, key, words in metrics
                if s.values.get(key) is not None
            ]
            if not entries:
                continue
            args: dict[str, Any] = {"used_for_selection": s.used_for_selection}
            rows = s.rows.get(task) if isinstance(s.rows, dict) else s.rows
            if rows:
                args["rows"] = int(rows)
            dataset = {"type": data_type, "name": data_name, "split": "dev", "config": s.config, "args": args}
            results.append({"task": {"type": task_type, "name": task_name}, "dataset": dataset, "metrics": entries})
    return [{"name": name, "results": results}]


def metadata(name: str, encoders: list[str], scores: list[DevScores]) -> dict[str, Any]:
    bases = sorted({b for b in map(base_model, encoders) if b})
    meta: dict[str, Any] = {}
    if bases:
        meta["base_model"] = bases[0] if len(bases) == 1 else bases
    meta["tags"] = TAGS
    meta["pipeline_tag"] = "text-classification"
    meta["language"] = ["en"]
    meta["model-index"] = model_index(name, scores)
    return meta


def render(meta: dict[str, Any], body: str) -> str:
    """A card: the YAML front matter between ``---`` lines, then the Markdown body."""
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n{body.strip()}\n"


def score_table(scores: list[DevScores]) -> str:
    lines = ["| task | metric | " + " | ".join(s.column for s in scores) + " |", "|---|---|" + "---|" * len(scores)]
    rows = [(name, words, key) for _, name, _, _, metrics in TASKS.values() for _, key, words in metrics]
    for task_name, words, key in [*rows, ("overall", "(sst + para + (1 + r) / 2) / 3", "overall")]:
        lines.append(f"| {task_name} | {words} | " + " | ".join(_number(s.values.get(key)) for s in scores) + " |")
    lines += ["", *[f"- **{s.column}**: {s.words}" for s in scores], f"- {NO_HELD_OUT}"]
    return "## Scores\n\n" + "\n".join(lines)


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def usage(folder: str, encoder_dirs: list[str], default_encoder: bool) -> str:
    loads = "\n".join(f'tokenizer = AutoTokenizer.from_pretrained("{d}")\nencoder = AutoModel.from_pretrained("{d}")'
                      for d in encoder_dirs)  # fmt: skip
    merged = "\nOne encoder per task (a specialist phase), sharing their bottom layers as `merged.json` says.\n"
    text = f"""
## Use it

Predictions on your own sentences, with this project installed (see its README):

```sh
mtbert-train predict {folder} --task sst --text "A gorgeous, witty film."
mtbert-train predict {folder} --task para --text "How do I learn Python?" --text2 "What is the best way to learn Python?"
mtbert-train predict {folder} --task sts --input pairs.csv --out sts.csv   # a header naming sentence1,sentence2 (and id)
```

One row per input: its id (if the input has ids), then for sst the class (0-4) and its 5
probabilities, for para 1 (a paraphrase) or 0 and the probability of a paraphrase, for sts the
score (0-5). Input may also be JSON lines, a course data file, or standard input (`--input -`).

The encoder alone, with `transformers` (a BERT in Hugging Face format, its tokenizer beside it):

```python
from transformers import AutoModel, AutoTokenizer

{loads}
```
{merged if len(encoder_dirs) > 1 else ""}
The task heads are mtbert's own (`heads.safetensors`): `mtbert.load_checkpoint(...)` loads the
whole model with them.
"""
    if default_encoder:
        from mtbert.tasks import QUORA_NOTE

        note = QUORA_NOTE.removeprefix("note: ")
        text += f"\n## Caveat\n\n{note[0].upper()}{note[1:]}.\n"
    return text


def rank_scores(info: dict[str, Any], subset: int | None) -> list[DevScores]:
    """The scores of an export rank (``trial.json``), each labelled with its dev rows."""
    selection = info.get("selection") or info.get("scores") or {}
    full = info.get("full_dev")
    scores = []
    if selection and subset is None:  # the search compared trials on every dev row
        words = "the whole dev sets, the scores the search compared trials on (so they took part in the choice)"
        scores.append(DevScores("full-dev", selection, words, True))
    elif selection:
        words = (f"{subset} dev rows per task, the same rows for every trial: the scores the search compared "
                 "trials on (the scheduler, the sampler)")  # fmt: skip
        scores.append(DevScores("selection-subset", selection, words, True, subset))
    if full and subset is not None:
        finalist = bool(info.get("finalist"))
        words = "the whole dev sets, scored after the search" + (
            " (they include the selection subset); the final ranking compared the finalists on them"
            if finalist else " (they include the selection subset)")  # fmt: skip
        scores.append(DevScores("full-dev", full, words, finalist, info.get("full_dev_examples")))
    return scores


def rank_card(folder: Path, info: dict[str, Any], config: Any, shown: str | None = None) -> str:
    """The card of an export rank: ``info`` is its ``trial.json``, ``config`` its run config;
    ``shown`` is the folder as the commands in the card name it (default ``folder``)."""
    from mtbert.train.checkpoint import ENCODER_DIR, ENCODERS_DIR

    shown = shown or str(folder)
    experiment = Path(info.get("experiment", ""))
    scores = rank_scores(info, info.get("selection_dev_examples", config.data.max_eval_per_task))
    rank, trial = info.get("rank"), info.get("trial_id")
    name = f"{experiment.name or 'mtbert-search'}-rank-{rank}"
    merged = (folder / ENCODERS_DIR).is_dir()
    encoder_dirs = [f"{shown}/{ENCODERS_DIR}/{t}" for t in TASKS] if merged else [f"{shown}/{ENCODER_DIR}"]
    rule = info.get("rank_rule") or f"by its best {info.get('metric', 'overall')} ({info.get('mode', 'max')})"
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in (info.get("params") or {}).items())
    body = f"""
# {name}: trial {trial}

A multi-task BERT: one encoder with a head per task (SST sentiment, Quora paraphrase, STS
similarity), fine-tuned in a hyperparameter search by mtbert-search. Rank {rank} of the search's
trials, {rule}.

{score_table(scores)}

## Sampled settings

| setting | value |
|---|---|
{settings}

Every other setting is in `{shown}/config.yaml`, the full run config (`mtbert-train {shown}/config.yaml`
trains it again).
{usage(shown, encoder_dirs, config.model.encoder == DEFAULT_ENCODER)}
## Where it came from

- search: `{experiment}` (`mtbert-search status {experiment}` lists its trials)
- trial `{trial}`, its checkpoint at step {info.get("step")} (evaluation {info.get("iteration")}):
  `{info.get("source")}`; Optuna: {info.get("optuna_state")}, Tune: {info.get("tune_status")}
- encoder fine-tuned from `{config.model.encoder}`, on the CS224N course files (SST-5, a sample of
  Quora question pairs, STS)
"""
    return render(metadata(name, [config.model.encoder], scores), body)


def ensemble_card(folder: Path, report: dict[str, Any], encoders: list[str], shown: str | None = None) -> str:
    """The card of an ensemble folder: ``report`` is its ``report.json``, ``encoders`` the members' ``model.encoder``."""
    from mtbert.tasks import QUORA_NOTE

    shown = shown or str(folder)
    experiment = Path(report.get("experiment", ""))
    name = f"{experiment.name or 'mtbert-search'}-ensemble"
    ens = report["ensemble"]
    words = ("the whole dev sets, on which the members and weights were chosen: by construction never below "
             "the best member's, and optimistic for that reason")  # fmt: skip
    scores = [DevScores("full-dev", ens["dev"], words, True)]
    best = report.get("best_member") or {}
    weights = "\n".join(f"| {task} | `{report['combiners'][task]}` | "
                        + ", ".join(f"{m} ({w:.3f})" for m, w in picked.items()) + " |"
                        for task, picked in ens["weights"].items())  # fmt: skip
    members = "\n".join(f"| {m['name']} | {m['trial_id']} | {m['rank']} | "
                        f"{'the trial' if m.get('seed') is None else m['seed']} | {_number(m['dev'].get('overall'))} "
                        f"| `{m['checkpoint']}` |" for m in report["members"])  # fmt: skip
    default = DEFAULT_ENCODER in encoders or any(QUORA_NOTE in n for n in report.get("notes", []))
    body = f"""
# {name}

An ensemble of {len(report["members"])} mtbert checkpoints from the search `{experiment}`: per task,
the members and their weights were chosen by greedy forward selection with replacement on the full
dev sets (Caruana et al. 2004), and their outputs are combined by the rule below.

{score_table(scores)}

The best single member, {best.get("name")}, on the same dev sets: overall {_number((best.get("dev") or {}).get("overall"))}.

## Members and weights

| task | rule | members (weight) |
|---|---|---|
{weights}

| member | trial | rank in the search | seed | full dev overall | checkpoint |
|---|---|---|---|---|---|
{members}

`mtbert-train predict {shown}` reads the members' checkpoints where `report.json` names them: keep the
search folder (and `{shown}/retrain/`, if any) where they are.
{usage(shown, [f"{report['members'][0]['checkpoint']}/encoder"], default)}
## Where it came from

- search: `{experiment}` (`mtbert-search status {experiment}` lists its trials); the top {report.get("top_k")}
  trial(s) by {report.get("metric")}, {report.get("retrain_seeds", 0)} retrained seed(s) each
- every member's scores, the weights and the selection's history: `{shown}/report.json`
"""
    return render(metadata(name, encoders, scores), body)


def write_card(folder: Path, info: dict[str, Any], shown: str | None = None) -> Path:
    """``folder/README.md``: the card of the export rank in ``folder`` (its config.yaml and ``info``, its trial.json)."""
    from mtbert import load_config
    from mtbert.train.checkpoint import CONFIG_FILE

    path = Path(folder) / CARD_FILE
    path.write_text(rank_card(Path(folder), info, load_config(Path(folder) / CONFIG_FILE), shown), encoding="utf-8")
    return path
