"""Check the parameters given to the notebook series before it runs.

papermill passes any name it is given and only warns when a notebook's
``parameters`` cell does not define it, and ``make run`` passes every
parameter to every notebook, so a misspelt ``-p EPOCSH 2`` would train for
the profile's full budget. ``make run`` calls this first, as a script (so
that the check does not wait for Keras to load), with ``-P`` so that the
modules beside it cannot shadow a library's:

    python -P helpers/parameters.py NOTEBOOK... -- PAPERMILL_OPTIONS...

It exits with status 2, naming each unknown parameter and the names the
notebooks define, when some name is defined by none of them.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import papermill
import yaml

# papermill's options that take a parameter name and a value, and those that take a YAML mapping.
NAME_VALUE_OPTIONS = ("-p", "--parameters", "-r", "--parameters_raw")
YAML_OPTIONS = ("-y", "--parameters_yaml")


def given_names(options: list[str]) -> list[str]:
    """The parameter names in papermill command-line options.

    Args:
        options: papermill's options, e.g. ``["-p", "EPOCHS", "5", "-y", "CHANNELS: [1]"]``;
            other options (``--log-output``...) are passed over.

    Returns:
        The names, in order, from ``-p``/``-r`` pairs, ``-y`` mappings,
        ``-b`` base64 mappings and ``-f`` YAML files.

    Raises:
        ValueError: naming the option, when its value is missing or not a
            mapping.
        OSError: when a ``-f`` file cannot be read.
    """
    # --option=value is one word on the command line; papermill reads it as two.
    options = [part for option in options
               for part in (option.split("=", 1) if option.startswith("--") and "=" in option else [option])]
    names, index = [], 0
    while index < len(options):
        option = options[index]
        if option in NAME_VALUE_OPTIONS:
            if index + 2 >= len(options):
                raise ValueError(f"{option} needs a parameter name and a value.")
            names.append(str(options[index + 1]))
            index += 3
            continue
        if option in YAML_OPTIONS + ("-b", "--parameters_base64", "-f", "--parameters_file"):
            if index + 1 >= len(options):
                raise ValueError(f"{option} needs a value.")
            value = options[index + 1]
            if option in ("-b", "--parameters_base64"):
                value = base64.b64decode(value).decode()
            elif option in ("-f", "--parameters_file"):
                value = Path(value).read_text()
            mapping = yaml.safe_load(value)
            if not isinstance(mapping, dict):
                raise ValueError(f"{option} {options[index + 1]!r}: give a mapping, such as 'CHANNELS: [1]'.")
            names.extend(str(name) for name in mapping)
            index += 2
            continue
        index += 1
    return names


def unknown_names(notebooks: list[str | Path], options: list[str]) -> tuple[list[str], list[str]]:
    """The names given that no notebook's ``parameters`` cell defines.

    Args:
        notebooks: the notebooks the options go to.
        options: papermill's options.

    Returns:
        (unknown names, every name the notebooks define), each sorted.
    """
    defined = set()
    for notebook in notebooks:
        defined |= set(papermill.inspect_notebook(str(notebook)))
    unknown = sorted({name for name in given_names(options) if name not in defined})
    return unknown, sorted(defined)


def main(argv: list[str] | None = None) -> int:
    """Run the check.

    Args:
        argv: ``NOTEBOOK... -- PAPERMILL_OPTIONS...``; ``None`` for ``sys.argv[1:]``.

    Returns:
        0 when every name given is a parameter of some notebook, 2 (naming
        the others and listing the parameters) when not, or when an option
        cannot be read.
    """
    argv = sys.argv[1:] if argv is None else argv
    notebooks, options = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -P helpers/parameters.py",
                                     description="Refuse papermill parameters that no notebook defines.")
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(notebooks)
    try:
        unknown, defined = unknown_names(args.notebooks, options)
    except (ValueError, OSError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if unknown:
        print(f"error: no notebook of {', '.join(p.name for p in args.notebooks)} has the parameter(s) "
              f"{', '.join(unknown)}: check the spelling. The parameters are: {', '.join(defined)}.",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
