"""`smlearn` command line: a thin layer over the Python API (smlearn.pipeline).

    smlearn run [--config my_run.yaml] [--out runs/x] [key=value ...]
    smlearn generate|collect|eval|report --run runs/x
    smlearn train sft|rm|rl --run runs/x
    smlearn score --data test.jsonl --predictions preds.jsonl [--json]
    smlearn view --run runs/x [--out page.html]
    smlearn lab pretrain [--ship] | config [lab.key=value ...]

Errors a user can act on (bad input, missing files, mismatched run
directories) print one line on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback

from .errors import SmlearnError
from .prompts import DEFAULT_TRIGGER


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smlearn", description="Self-motivated Learning for causal LMs")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run every stage into a run directory (resumable)")
    r.add_argument("--config", help="YAML config (default: the built-in reasoning lab)")
    r.add_argument("--out", help="run directory (default: runs/<config name>)")
    r.add_argument("--force", action="store_true", help="redo stages whose config changed")
    r.add_argument("--until", choices=["generate", "collect", "sft", "rm", "rl", "eval", "report"],
                   help="stop after this stage")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. rl.steps=20")

    for name, helptext in [("generate", "stage 1: write rationales.jsonl"),
                           ("collect", "stage 2: final answers, levels, sft.jsonl, pairs.jsonl"),
                           ("eval", "stage 6: greedy CoT accuracy on the test split"),
                           ("report", "stage 7: write report.md")]:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--run", required=True, help="run directory")
        if name == "eval":
            s.add_argument("--stages", nargs="+", choices=["base", "sft", "rl"])

    t = sub.add_parser("train", help="stages 3-5: train sft | rm | rl")
    t.add_argument("what", choices=["sft", "rm", "rl"])
    t.add_argument("--run", required=True, help="run directory")

    sc = sub.add_parser("score", help="score raw completions against a dataset (no model)")
    sc.add_argument("--data", required=True, help="dataset JSONL (id, question, answer, kind, ...)")
    sc.add_argument("--predictions", required=True, help='JSONL of {"id": ..., "completion": ...}')
    sc.add_argument("--trigger", default=DEFAULT_TRIGGER)
    sc.add_argument("--json", action="store_true", help="print a JSON summary")

    v = sub.add_parser("view", help="write one self-contained HTML page to browse a run (no server, no network)")
    v.add_argument("--run", required=True, help="run directory")
    v.add_argument("--out", help="HTML file (default: <run>/view.html)")

    lab = sub.add_parser("lab", help="the reasoning lab (synthetic tasks, tiny pretrained model)")
    lab.add_argument("action", choices=["pretrain", "config"],
                     help="pretrain: build (or find) the base model; config: print the resolved lab.* settings "
                          "as YAML, building nothing")
    lab.add_argument("--ship", action="store_true",
                     help="pretrain afresh and store the model in the package (the default job's base model)")
    lab.add_argument("overrides", nargs="*", metavar="lab.key=value", help="lab settings, e.g. lab.pretrain.steps=900")
    return p


def _dispatch(args) -> int:
    from . import pipeline

    if args.command == "score":
        from .evaluate.score import score

        result = score(args.data, args.predictions, trigger=args.trigger)
        if result.missing:
            print(f"smlearn: warning: {len(result.missing)} of {result.total} examples have no prediction in "
                  f"{args.predictions} (counted wrong), e.g. id {result.missing[0]!r}", file=sys.stderr)
        if args.json:
            d = result.to_dict()
            d.pop("per_example", None)
            print(json.dumps(d))
        else:
            print(result.summary_line())
        return 0
    if args.command == "run":
        if args.config is None:
            from .lab.default import run_lab

            run_lab(args.out or "runs/lab", args.overrides, force=args.force, until=args.until)
            return 0
        out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
        pipeline.run(args.config, out, overrides=args.overrides, force=args.force, until=args.until)
        return 0
    if args.command == "view":
        from .view import write_view

        print(f"[smlearn] view: {write_view(args.run, args.out)}")
        return 0
    if args.command == "lab":
        from .lab.default import config_command, pretrain_command

        if args.action == "config":
            config_command(args.overrides)
        else:
            pretrain_command(args.overrides, ship=args.ship)
        return 0
    stage = {"generate": pipeline.generate, "collect": pipeline.collect, "report": pipeline.report}
    if args.command in stage:
        out = stage[args.command](args.run)
        if isinstance(out, dict):
            pipeline._log(args.command, out)
        else:
            print(f"[smlearn] report: {out}")
        return 0
    if args.command == "eval":
        pipeline._log("eval", pipeline.evaluate(args.run, args.stages))
        return 0
    if args.command == "train":
        fn = {"sft": pipeline.train_sft, "rm": pipeline.train_rm, "rl": pipeline.train_rl}[args.what]
        pipeline._log(f"train {args.what}", fn(args.run))
        return 0
    raise AssertionError(args.command)


# OS errors a user can act on (permissions, a full disk, a read-only file system): one line, not a traceback.
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR,
                errno.ENOENT, errno.EMFILE}


def _os_error_line(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    hint = {errno.ENOSPC: "; free some space and rerun the same command to resume",
            errno.EDQUOT: "; free some space and rerun the same command to resume"}.get(e.errno, "")
    return f"{where}{e.strerror or e}{hint}"


def _disk_full(e: Exception) -> bool:
    text = str(e)
    return "No space left" in text or "StorageFull" in text or "os error 28" in text


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .console import quiet_libraries

    quiet_libraries()
    try:
        return _dispatch(args)
    except SmlearnError as e:
        from . import dist
        from .errors import ConfigError

        # Several processes (smlearn.dist): rank 0 prints the errors all ranks share (a config error, rank 0's
        # refusal passed on); another rank prints only an error of its own, prefixed with its rank.
        if dist.is_main() or not isinstance(e, (dist.SharedError, ConfigError)):
            print(f"{dist.prefix()}smlearn: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smlearn: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in _USER_ERRNOS:
            return _bug()
        print(f"smlearn: error: {_one_line(_os_error_line(e))}", file=sys.stderr)
        return 2
    except Exception as e:       # e.g. safetensors' SafetensorError on a full disk
        if _disk_full(e):
            print("smlearn: error: no space left on the device while writing; free some space and rerun the "
                  "same command to resume", file=sys.stderr)
            return 2
        return _bug()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _bug() -> int:
    """An exception nobody anticipated: the traceback, and a line saying it is a bug in smlearn."""
    traceback.print_exc()
    print("smlearn: internal error: this is a bug in smlearn, not a problem with your input; please report it "
          "with the traceback above", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
