"""Reference flattener: parse a YAML/JSON file with PyYAML and print PATH<TAB>VALUE lines in
the format of files/yaml.awk (used by run.sh to cross-check the awk parser)."""

import sys

import yaml


def esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def scalar(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def walk(node, path, out):
    if isinstance(node, dict):
        for k, v in node.items():
            walk(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{path}.{i}" if path else str(i), out)
    elif isinstance(node, int) and not isinstance(node, bool) and path.endswith(".permissions"):
        # YAML 1.1 reads an unquoted 0600 as the octal int 384; yaml.awk keeps the text "0600",
        # which chmod reads the same way.
        out.append(f"{path}\t0{node:o}")
    else:
        out.append(f"{path}\t{esc(scalar(node))}")


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    out: list[str] = []
    walk(doc, "", out)
    print("\n".join(out))


if __name__ == "__main__":
    main()
