"""Typed eval configs: one `DatasetConfig` per dataset YAML, one `EvalConfig` per run.

A dataset YAML (configs/eval/datasets/NAME.yaml) names a loader, the reader columns,
the prompt template, the inferencer, the postprocessor and the evaluator. An eval run
(configs/eval/*.yaml) names models x datasets plus partitioning and output options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puyu_jax.config import REPO_ROOT, ConfigError, configs_dir, load_config

ASSETS = Path(__file__).resolve().parent / "assets"
LOADERS = ("jsonl", "json", "csv", "tar.gz", "arc", "mmlu", "piqa", "winogrande", "hellaswag", "squad", "humaneval",
           "mt_bench")
INFERENCERS = ("ppl", "loglikelihood", "gen")
NORMALIZE = ("token", "char", "none")
POSTPROCESSORS = ("none", "first_option", "gsm8k", "cmrc", "first_line", "code", "bbh", "mbpp", "math")
EVALUATORS = ("accuracy", "gsm8k", "em_f1_zh", "humaneval", "llm_judge", "qa_em", "rouge", "mbpp", "math",
              "ifeval")
GROUPS = ("学科", "语言", "知识", "理解", "推理", "代码", "指令", "主观", "")


class DatasetError(ConfigError):
    """A dataset cannot be read or does not fit its config (bad file, line, column or template field)."""


@dataclass(frozen=True)
class LoaderConfig:
    """Where rows come from. `path` is a file or directory ("" = the shipped subset of the
    dataset in `puyu_jax/eval/assets/<name>`); `test`/`dev` are files inside a directory path.

    The generic loaders (jsonl / json / csv) also take glob patterns for `test`/`dev` (each row
    then gets a `_file` column, the file's stem), and these per-row transforms, in this order:
    nested mappings are flattened (`{"answer": {"value": v}}` adds column `answer.value`);
    `subject_pattern` (a regex with one group, matched against the file stem) adds `subject`
    and `subject_name` (underscores as spaces); `split` turns a string column into a list by a
    regex separator; `attach` adds a column holding the text of a file whose path (relative
    to the dataset directory) is formatted from the row, e.g. `lib_prompt/{subject}.txt`.
    `test_rows` / `dev_rows` ("start:stop") keep a slice of each split.
    """

    type: str = "jsonl"
    path: str = ""
    test: str = ""
    dev: str = ""
    labels: str = ""  # a labels file (piqa, winogrande), relative to `path`
    delimiter: str = ""  # csv: "" = tab for .tsv files, else comma
    records_key: str = ""  # json: the key holding the list of records ("" = the top level or "data")
    subject_pattern: str = ""
    split: dict[str, str] = field(default_factory=dict)
    attach: dict[str, str] = field(default_factory=dict)
    test_rows: str = ""
    dev_rows: str = ""
    strict: bool = False  # a malformed line is an error (default: counted in `skipped` and left out)

    def __post_init__(self):
        if self.type not in LOADERS:
            raise ValueError(f"loader.type={self.type!r}: expected one of {', '.join(LOADERS)}")
        if len(self.delimiter) > 1:
            raise ValueError(f"loader.delimiter={self.delimiter!r}: expected one character (e.g. ',' or '\\t')")
        for key in ("test_rows", "dev_rows"):
            v = getattr(self, key)
            if v and (v.count(":") != 1 or not all(x.strip().lstrip("-").isdigit() for x in v.split(":") if x.strip())):
                raise ValueError(f"loader.{key}={v!r}: expected 'start:stop', e.g. '10:510'")


@dataclass(frozen=True)
class ReaderConfig:
    """Which columns a template sees and which holds the gold answer."""

    input_columns: tuple[str, ...] = ()
    output_column: str = "answer"
    id_column: str = ""  # "" = the row index


@dataclass(frozen=True)
class FewShotConfig:
    """In-context examples from the dev split, picked by fixed row ids.

    `match_column` restricts the dev rows to those sharing this column's value with the
    test row (MMLU: the subject) before the ids are applied. A dataset without a dev split
    takes its examples from the other test rows (as lm-eval does)."""

    ids: tuple[int, ...] = ()
    split: str = "dev"
    match_column: str = ""
    # the example's answer, after `template` ("" = its gold option's continuation for option
    # scoring, else " " + its gold column)
    answer_template: str = ""
    separator: str = "\n\n"


@dataclass(frozen=True)
class PromptConfig:
    """Templates are Python format strings over the row's columns.

    base meta template: `instruction + examples + template` is one text;
    chat meta template: each example is a user/assistant turn pair and the test item is
    the last user turn (the instruction becomes the system message when `system`).
    For `ppl`/`loglikelihood`, every option is a continuation of the prompt: `continuations`
    maps gold labels to templates, or `options_column` names a list column whose i-th item
    (label `i`, or the i-th character of `option_labels`, e.g. "ABCD") fills `{option}` (and
    its label `{label}`) in `continuation`.

    Fields: `{col}`, `{col[0]}` (an item of a list column), `{col:join=, }` (a list column
    joined by the text after `join=`); a missing column (null) renders as "".
    """

    template: str = "{question}"
    instruction: str = ""
    system: bool = False
    meta: str = "base"
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    continuations: dict[str, str] = field(default_factory=dict)
    options_column: str = ""
    continuation: str = " {option}"
    option_labels: str = ""

    def __post_init__(self):
        if self.meta not in ("base", "chat"):
            raise ValueError(f"prompt.meta={self.meta!r}: expected 'base' or 'chat'")


@dataclass(frozen=True)
class InferencerConfig:
    """ppl / loglikelihood: every option is scored once and three decision rules are applied to
    the same log-likelihoods (all reported):

      acc       argmax of the summed log-prob (lm-eval `acc`)
      acc_norm  argmax of log-prob / len(option text in characters) (lm-eval `acc_norm`)
      acc_nll   argmin of the mean token NLL (OpenCompass' PPL inferencer)

    `normalize` picks the dataset's score: `none` -> acc, `char` -> acc_norm, `token` ->
    acc_nll (loglikelihood always scores acc). gen: greedy generation."""

    type: str = "ppl"
    normalize: str = "token"
    max_out_len: int = 256
    stops: tuple[str, ...] = ()
    multi_turn: bool = False  # gen over a `turns` column, one model reply per user turn

    def __post_init__(self):
        if self.type not in INFERENCERS:
            raise ValueError(f"inferencer.type={self.type!r}: expected one of {', '.join(INFERENCERS)}")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"inferencer.normalize={self.normalize!r}: expected one of {', '.join(NORMALIZE)}")
        if self.max_out_len < 1:
            raise ValueError("inferencer.max_out_len must be >= 1")


@dataclass(frozen=True)
class JudgeConfig:
    """An LLM judge behind an OpenAI-compatible URL (MT-bench single-answer grading)."""

    url: str = ""
    model: str = ""
    api_key: str = "EMPTY"
    prompts: str = ""  # judge_prompts.jsonl ("" = beside the questions)
    max_tokens: int = 512
    concurrency: int = 4


@dataclass(frozen=True)
class EvaluatorConfig:
    """One of EVALUATORS (see `puyu_jax.eval.evaluators`); `average_by` averages accuracy
    per value of a column first (MMLU subjects), as OpenCompass does; `answers_column` holds
    the list of accepted answers (qa_em); `metric` picks the score among the evaluator's
    metrics ("" = its default, e.g. rougeL for rouge)."""

    type: str = "accuracy"
    average_by: str = ""
    answers_column: str = ""
    metric: str = ""
    timeout_s: float = 10.0
    memory_mb: int = 1024
    workers: int = 2
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def __post_init__(self):
        if self.type not in EVALUATORS:
            raise ValueError(f"evaluator.type={self.type!r}: expected one of {', '.join(EVALUATORS)}")


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset: loader -> reader -> prompt -> inferencer -> postprocessor -> evaluator."""

    name: str = ""
    abbr: str = ""
    group: str = ""  # capability: 学科 / 语言 / 知识 / 理解 / 推理 / 代码 / 指令 (instruction following) / 主观
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    inferencer: InferencerConfig = field(default_factory=InferencerConfig)
    postprocessor: str = "none"
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    max_samples: int = 0  # 0 = all rows

    def __post_init__(self):
        if not self.name:
            raise ValueError("a dataset needs a name")
        if self.postprocessor not in POSTPROCESSORS:
            raise ValueError(f"postprocessor={self.postprocessor!r}: expected one of {', '.join(POSTPROCESSORS)}")
        if self.group not in GROUPS:
            raise ValueError(f"group={self.group!r}: expected one of {', '.join(g for g in GROUPS if g)}")

    @property
    def label(self) -> str:
        return self.abbr or self.name

    @property
    def data_dir(self) -> str:
        """The dataset's directory under `data_root` (and under the shipped assets): the name
        up to its first "-" (race-middle and race-high share `race/`)."""
        return self.name.split("-")[0]

    def data_path(self) -> Path:
        """The loader's path, or the shipped subset."""
        if not self.loader.path:
            return ASSETS / self.data_dir
        p = Path(self.loader.path).expanduser()
        if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
            p = REPO_ROOT / p
        return p


MODEL_TYPES = ("local", "openai", "gold", "constant")


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate.

    type local: `path` is any source `load_pretrained` accepts (smollm2, a checkpoint dir, a
    config name); type openai: `url` (+ `model`, `api_key`) of an OpenAI-compatible server;
    the check backends: type gold answers every dataset's gold answer (100%), type constant
    answers `path` ("A" when empty) to everything and scores chance.
    `meta` overrides the datasets' meta template (base / chat; "" keeps theirs).
    """

    abbr: str = "smollm2"
    type: str = "local"
    path: str = "smollm2"
    url: str = ""
    model: str = ""
    api_key: str = "EMPTY"
    meta: str = ""
    batch_size: int = 8
    max_seq_len: int = 2048
    dtype: str = "float32"
    concurrency: int = 4  # parallel requests (openai)
    devices: int = 1  # accelerators per task (runner device groups, SLURM --gres)

    def __post_init__(self):
        if self.type not in MODEL_TYPES:
            raise ValueError(f"model type={self.type!r}: expected one of {', '.join(MODEL_TYPES)}")
        if self.type == "openai" and not self.url:
            raise ValueError(f"model {self.abbr!r}: type openai needs a url")
        if self.meta not in ("", "base", "chat"):
            raise ValueError(f"model meta={self.meta!r}: expected '', 'base' or 'chat'")


@dataclass(frozen=True)
class SlurmConfig:
    partition: str = ""
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    time: str = "04:00:00"
    extra: tuple[str, ...] = ()  # more `#SBATCH` lines, e.g. "--qos=high"
    sbatch: str = "sbatch"


@dataclass(frozen=True)
class EvalConfig:
    """An eval run: every model on every dataset, partitioned into (model, dataset, shard) tasks.

    `models` are ModelSpec mappings (checked on load; see `model_specs`); `datasets` are
    names under configs/eval/datasets/ or YAML paths; `dataset_overrides` are `key=value`
    strings applied to every dataset (e.g. `max_samples=20`).
    """

    models: tuple[dict[str, Any], ...] = ({"abbr": "smollm2", "type": "local", "path": "smollm2"},)
    datasets: tuple[str, ...] = ("mmlu",)
    dataset_overrides: tuple[str, ...] = ()
    data_root: str = ""  # a directory laid out like shared/data/eval: full sets instead of subsets
    out_dir: str = "outputs/eval"
    shard_size: int = 0  # samples per task (0 = one task per model x dataset)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    # the summary table's rows: {capability: [dataset name or abbr, ...]} blocks in this order
    # (empty = by each dataset's own group)
    summary_groups: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        abbrs = [m.abbr for m in self.model_specs]
        if len(set(abbrs)) != len(abbrs):
            raise ValueError(f"model abbrs must be unique, got {abbrs}")
        listed = [d for ds in self.summary_groups.values() for d in ds]
        if len(set(listed)) != len(listed):
            twice = sorted({d for d in listed if listed.count(d) > 1})
            raise ValueError(f"summary_groups list a dataset twice: {twice}")

    @property
    def model_specs(self) -> tuple[ModelSpec, ...]:
        """`models` as ModelSpec objects (a bad key names itself as models[i].KEY)."""
        from puyu_jax.config import from_dict

        out = []
        for i, m in enumerate(self.models):
            try:
                out.append(from_dict(ModelSpec, dict(m)))
            except ConfigError as e:
                raise ConfigError(f"models[{i}]: {e}") from e
        return tuple(out)


def dataset_yaml(name: str) -> Path:
    """The YAML of a dataset name (configs/eval/datasets/NAME.yaml) or a path."""
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml"):
        for c in (p, REPO_ROOT / p):
            if c.is_file():
                return c
        raise ConfigError(f"dataset config {name!r} not found")
    d = configs_dir() / "eval" / "datasets"
    f = d / f"{name}.yaml"
    if not f.is_file():  # lm-eval spells names with "_" (arc_e), ours with "-" (arc-e)
        f = d / f"{name.replace('_', '-')}.yaml"
    if not f.is_file():
        known = sorted(x.stem for x in d.glob("*.yaml"))
        raise ConfigError(f"no dataset named {name!r}; known: {', '.join(known)}")
    return f


def load_dataset_config(name: str, overrides=(), data_root: str = "") -> DatasetConfig:
    """A DatasetConfig from a name or YAML path, with `key=value` overrides.

    With `data_root`, `loader.path` defaults to `data_root/<dataset dir>` (the full set)."""
    cfg = load_config(DatasetConfig, dataset_yaml(name), list(overrides))
    if data_root and not cfg.loader.path:
        cfg = load_config(DatasetConfig, cfg, [f"loader.path={Path(data_root).expanduser() / cfg.data_dir}"])
    return cfg
