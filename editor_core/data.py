"""Read knowledge-editing benchmark files into :class:`EditRequest` lists, and write them back.

Four input formats are understood: zsRE as prepared by MEND, zsRE as shipped by KnowEdit,
CounterFact as split by EasyEdit, and this project's own JSON Lines format (the only one we write).

Every loader checks every record before returning anything, so a caller gets either the whole
file or a :class:`DataFormatError` that names the file, the record and the field; a half-loaded
data set would silently skew a benchmark. Text fields are stripped of surrounding whitespace
(zsRE ships targets such as ``" Dickens"``): where a space goes is the tokenizer's business.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from editor_core.types import EditRequest, LocalityProbe

FORMATS = ("auto", "zsre", "knowedit", "counterfact", "jsonl")
NQ_PREFIX = "nq question: "
_MISSING = object()

PathLike = str | os.PathLike[str]


class DataFormatError(ValueError):
    """A data file does not match its format; says where, so the file can be fixed by hand.

    ``index`` is the 0-based record number in a JSON list, the 1-based line number in a JSON Lines
    file, or ``None`` when the problem is the file as a whole. ``field`` is ``None`` when the
    problem is the record as a whole.
    """

    def __init__(self, path: PathLike, index: int | None, field: str | None, problem: str,
                 unit: str = "record") -> None:
        self.path, self.index, self.field, self.problem = str(path), index, field, problem
        where = [self.path]
        if index is not None:
            where.append(f"{unit} {index}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join(where + [problem]))


def _describe(value: Any) -> str:
    """A short repr for error messages, so one huge bad value doesn't drown the message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Record:
    """Typed, stripped access to one raw record; every failure names file, index and field."""

    def __init__(self, raw: Any, path: PathLike, index: int, unit: str) -> None:
        self.path, self.index, self.unit = path, index, unit
        if not isinstance(raw, dict):
            raise self.error(None, f"expected a JSON object, got {_describe(raw)}")
        self.raw: dict[str, Any] = raw

    def error(self, field: str | None, problem: str) -> DataFormatError:
        return DataFormatError(self.path, self.index, field, problem, self.unit)

    def get(self, field: str, required: bool) -> Any:
        """The raw value; an absent or null optional field is ``None`` (JSON writers emit both)."""
        value = self.raw.get(field, _MISSING)
        if value is _MISSING:
            if required:
                raise self.error(field, "missing")
            return None
        return value

    def check_text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"expected a non-empty string, got {_describe(value)}")
        return value.strip()

    def text(self, field: str, required: bool = True) -> str | None:
        value = self.get(field, required)
        return None if value is None and not required else self.check_text(value, field)

    def text_list(self, field: str, required: bool = False) -> list[str]:
        value = self.get(field, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of strings, got {_describe(value)}")
        return [self.check_text(item, f"{field}[{i}]") for i, item in enumerate(value)]

    def answer(self, value: Any, field: str) -> str:
        """First answer of a ground-truth value: a string, a list of them, or a list of alias lists.

        EasyEdit files use all three shapes; the first string is the canonical answer.
        """
        while isinstance(value, list):
            if not value:
                raise self.error(field, "expected at least one answer, got []")
            for i, item in enumerate(value):  # check every alternative, use the first
                if not isinstance(item, (str, list)):
                    raise self.error(f"{field}[{i}]", f"expected a string, got {_describe(item)}")
            value, field = value[0], f"{field}[0]"
        return self.check_text(value, field)

    def probes(self, value: Any, field: str, answer_key: str) -> list[dict[str, str]]:
        """A list of ``{prompt, <answer_key>}`` objects, as ``{prompt, answer}`` dicts."""
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of objects, got {_describe(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{field}[{i}]", f"expected an object, got {_describe(item)}")
            prompt = self.check_text(item.get("prompt"), f"{field}[{i}].prompt")
            out.append({"prompt": prompt,
                        "answer": self.answer(item.get(answer_key), f"{field}[{i}].{answer_key}")})
        return out


def _drops_paraphrase(paraphrase: str, prompt: str) -> bool:
    """A paraphrase equal to, or a prefix of, its prompt tests memorisation, not generalisation."""
    return prompt.startswith(paraphrase)


def _parse_zsre(rec: _Record) -> EditRequest:
    """MEND-style zsRE; ``loc`` loses MEND's ``"nq question: "`` tag, which no model should see."""
    loc = rec.text("loc", required=False)
    if loc is not None and loc.startswith(NQ_PREFIX):
        loc = rec.check_text(loc[len(NQ_PREFIX):], "loc")
    answers = rec.text_list("answers")
    pred = rec.text("pred", required=False)
    rephrase = rec.text("rephrase", required=False)
    return EditRequest(
        prompt=rec.text("src"), target=rec.text("alt"),
        paraphrases=() if rephrase is None else (rephrase,),
        locality=() if loc is None else (LocalityProbe(loc, rec.text("loc_ans", required=False)),),
        subject=rec.text("subject", required=False),
        ground_truth=answers[0] if answers else pred)


def _probe_groups(rec: _Record, key: str) -> dict[str, list[dict[str, str]]]:
    """KnowEdit's ``{group: [{prompt, ground_truth}]}`` objects, each answer reduced to a string."""
    groups = rec.get(key, required=False)
    if groups is None:
        return {}
    if not isinstance(groups, dict):
        raise rec.error(key, f"expected an object, got {_describe(groups)}")
    return {name: rec.probes(v, f"{key}.{name}", "ground_truth") for name, v in groups.items()}


def _parse_knowedit(rec: _Record) -> EditRequest:
    """KnowEdit zsRE; every list under ``locality`` (here only Relation_Specificity) becomes probes.

    Portability questions (multi-hop, aliases) aren't part of an edit, so they ride along in
    ``meta["portability"]`` as ``{kind: [{prompt, answer}]}`` for benchmarks that want them.
    """
    gt = rec.get("ground_truth", required=False)
    rephrase = rec.text("rephrase_prompt", required=False)
    locality = [LocalityProbe(p["prompt"], p["answer"])
                for probes in _probe_groups(rec, "locality").values() for p in probes]
    portability = _probe_groups(rec, "portability")
    meta: dict[str, Any] = {"portability": portability} if portability else {}
    return EditRequest(
        prompt=rec.text("prompt"), target=rec.text("target_new"),
        paraphrases=() if rephrase is None else (rephrase,), locality=locality,
        subject=rec.text("subject", required=False),
        ground_truth=None if gt is None else rec.answer(gt, "ground_truth"), meta=meta)


def _parse_counterfact(rec: _Record) -> EditRequest:
    """EasyEdit CounterFact; see :func:`_drops_paraphrase` for why some paraphrases are dropped."""
    prompt = rec.text("prompt")
    case_id = rec.get("case_id", required=False)
    if case_id is not None and (not isinstance(case_id, (int, str)) or isinstance(case_id, bool)):
        raise rec.error("case_id", f"expected an integer or string, got {_describe(case_id)}")
    rephrase = rec.text("rephrase_prompt", required=False)
    dropped = rephrase is not None and _drops_paraphrase(rephrase, prompt)
    loc = rec.text("locality_prompt", required=False)
    return EditRequest(
        prompt=prompt, target=rec.text("target_new"),
        paraphrases=() if rephrase is None or dropped else (rephrase,),
        locality=() if loc is None else
        (LocalityProbe(loc, rec.text("locality_ground_truth", required=False)),),
        subject=rec.text("subject", required=False),
        ground_truth=rec.text("ground_truth", required=False),
        meta={"case_id": case_id, "paraphrase_dropped": dropped})


def _parse_jsonl(rec: _Record) -> EditRequest:
    """This project's own format (see :func:`save_jsonl`)."""
    locality = []
    raw_loc = rec.get("locality", required=False)
    raw_loc = [] if raw_loc is None else raw_loc
    if not isinstance(raw_loc, list):
        raise rec.error("locality", f"expected a list, got {_describe(raw_loc)}")
    for i, item in enumerate(raw_loc):
        field = f"locality[{i}]"
        if isinstance(item, str):
            locality.append(LocalityProbe(rec.check_text(item, field)))
        elif isinstance(item, dict):
            answer = item.get("answer")
            locality.append(LocalityProbe(
                rec.check_text(item.get("prompt"), f"{field}.prompt"),
                None if answer is None else rec.check_text(answer, f"{field}.answer")))
        else:
            raise rec.error(field, f"expected a string or an object, got {_describe(item)}")
    meta = rec.get("meta", required=False)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise rec.error("meta", f"expected an object, got {_describe(meta)}")
    return EditRequest(
        prompt=rec.text("prompt"), target=rec.text("target"),
        paraphrases=rec.text_list("paraphrases"), locality=locality,
        subject=rec.text("subject", required=False),
        ground_truth=rec.text("ground_truth", required=False), meta=meta)


_PARSERS: dict[str, tuple[Callable[[_Record], EditRequest], str]] = {
    # format: (record parser, field holding the target)
    "zsre": (_parse_zsre, "alt"),
    "knowedit": (_parse_knowedit, "target_new"),
    "counterfact": (_parse_counterfact, "target_new"),
    "jsonl": (_parse_jsonl, "target"),
}


def _read_json_list(path: PathLike) -> list[Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, None, None,
                              f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    if not isinstance(data, list):
        got = type(data).__name__
        raise DataFormatError(path, None, None, f"expected a top-level JSON list, got {got}")
    return data


def _read_json_lines(path: PathLike) -> list[tuple[int, Any]]:
    """``(line number, object)`` pairs; blank lines are skipped, numbers stay those of the file."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    out.append((lineno, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataFormatError(path, lineno, None, f"invalid JSON: {exc.msg}",
                                          unit="line")
    return out


def _convert(path: PathLike, numbered: Iterable[tuple[int, Any]], fmt: str, unit: str,
             skip_blank_targets: bool) -> list[EditRequest]:
    parse, target_field = _PARSERS[fmt]
    out, skipped = [], []
    for index, raw in numbered:
        rec = _Record(raw, path, index, unit)
        value = rec.raw.get(target_field)
        if skip_blank_targets and isinstance(value, str) and not value.strip():
            skipped.append(index)
            continue
        out.append(parse(rec))
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} {unit}(s) with a blank "
                      f"{target_field!r}: {skipped}", stacklevel=3)
    return out


def _load_json(path: PathLike, fmt: str, skip_blank_targets: bool) -> list[EditRequest]:
    return _convert(path, enumerate(_read_json_list(path)), fmt, "record", skip_blank_targets)


def load_zsre_mend(path: PathLike, *, skip_blank_targets: bool = False) -> list[EditRequest]:
    """zsRE as prepared by MEND (``src``, ``alt``, ``rephrase``, ``loc``, ``loc_ans``, ...).

    MEND's ``train`` file has records whose ``alt`` is ``""`` (no counterfactual was drawn);
    they are an error unless ``skip_blank_targets`` is set, which skips them with a warning.
    """
    return _load_json(path, "zsre", skip_blank_targets)


def load_zsre_knowedit(path: PathLike, *, skip_blank_targets: bool = False) -> list[EditRequest]:
    """zsRE as shipped by KnowEdit (``prompt``, ``target_new``, ``locality``, ``portability``)."""
    return _load_json(path, "knowedit", skip_blank_targets)


def load_counterfact(path: PathLike, *, skip_blank_targets: bool = False) -> list[EditRequest]:
    """CounterFact as split by EasyEdit; ``meta`` holds ``case_id`` and ``paraphrase_dropped``."""
    return _load_json(path, "counterfact", skip_blank_targets)


def load_jsonl(path: PathLike, *, skip_blank_targets: bool = False) -> list[EditRequest]:
    """This project's JSON Lines format; error indices are 1-based line numbers."""
    return _convert(path, _read_json_lines(path), "jsonl", "line", skip_blank_targets)


def detect_format(first: Any) -> str | None:
    """Name the format of a record from its keys, or ``None`` when it matches none."""
    keys = set(first) if isinstance(first, dict) else set()
    if {"src", "alt"} <= keys:
        return "zsre"
    if "target_new" in keys:
        return "counterfact" if keys & {"case_id", "locality_prompt"} else "knowedit"
    if {"prompt", "target"} <= keys:
        return "jsonl"
    return None


def load_edits(path: PathLike, fmt: str = "auto", *,
               skip_blank_targets: bool = False) -> list[EditRequest]:
    """Load any supported file; ``auto`` goes by the ``.jsonl`` extension, then the first record.

    A ``.json`` list of records in this project's own schema is accepted as ``jsonl`` too.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "jsonl" or (fmt == "auto" and Path(path).suffix.lower() == ".jsonl"):
        return load_jsonl(path, skip_blank_targets=skip_blank_targets)
    records = _read_json_list(path)
    if fmt == "auto" and records:
        fmt = detect_format(records[0]) or ""
        if not fmt:
            keys = sorted(records[0]) if isinstance(records[0], dict) else records[0]
            raise DataFormatError(path, 0, None, f"cannot tell the format from {_describe(keys)}; "
                                  f"pass fmt= one of {', '.join(FORMATS[1:])}")
    if not records:
        return []
    return _convert(path, enumerate(records), fmt, "record", skip_blank_targets)


def request_to_dict(request: EditRequest) -> dict[str, Any]:
    """The JSON Lines object for one request; absent optional fields are left out."""
    out: dict[str, Any] = {"prompt": request.prompt, "target": request.target}
    if request.paraphrases:
        out["paraphrases"] = list(request.paraphrases)
    if request.locality:
        out["locality"] = [{"prompt": p.prompt} if p.answer is None
                           else {"prompt": p.prompt, "answer": p.answer} for p in request.locality]
    for key in ("subject", "ground_truth"):
        if getattr(request, key) is not None:
            out[key] = getattr(request, key)
    if request.meta:
        out["meta"] = request.meta
    return out


def save_jsonl(requests: Iterable[EditRequest], path: PathLike) -> None:
    """Write requests in the format :func:`load_jsonl` reads.

    Written to a temporary file and renamed, so a crash never leaves a truncated data set behind.
    """
    lines = [json.dumps(request_to_dict(r), ensure_ascii=False) + "\n" for r in requests]
    tmp = Path(f"{path}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
