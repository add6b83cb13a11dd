"""Command line: ``python -m fer_utils run ...`` (the notebook chain), ``python -m fer_utils predict ...``,
``python -m fer_utils train ...`` (notebook 05 as one command, also on a cluster),
``python -m fer_utils demo`` (a local web page for the trained model), ``python -m fer_utils site`` (the
series as a static HTML site), ``python -m fer_utils export`` (the notebooks' saved cells into the package)."""

import sys

USAGE = """usage: python -m fer_utils {run,train,predict,demo,site,export} ...

  run       execute the numbered notebooks in order with papermill (python -m fer_utils run --help)
  train     train as notebook 05 does, on one device, several or a cluster (python -m fer_utils train --help)
  predict   predict the emotions of faces in photos (python -m fer_utils predict --help)
  demo      a local web page to try the trained model on photos (python -m fer_utils demo --help)
  site      build the notebook series as a static HTML site (python -m fer_utils site --help)
  export    write the notebooks' `# @save` cells into the package (python -m fer_utils export --help)
"""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)  # asked for: stdout; a usage error: stderr
        return 0 if argv else 2
    try:
        return _dispatch(argv[0], argv[1:])
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (run and train say more in their own words)
        print(f"\ninterrupted: `python -m fer_utils {argv[0]}` stopped; run it again to redo what it was doing.",
              file=sys.stderr)
        return 130


def _dispatch(command: str, rest: list[str]) -> int:
    if command == "run":
        from fer_utils.runner import main as run
        return run(rest)
    if command == "train":
        from fer_utils.train_command import main as train
        return train(rest)
    if command == "predict":
        from fer_utils.prediction import main as predict
        return predict(rest)
    if command == "demo":
        from fer_utils.prediction.demo import main as demo
        return demo(rest)
    if command == "export":
        from fer_utils.saved_cells import main as export
        return export(rest)
    if command == "site":
        from fer_utils.site import main as site
        return site(rest)
    print(f"Unknown command {command!r}.\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
