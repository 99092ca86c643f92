#!/usr/bin/env python3
"""Renders or lints the chart with the real Helm (helm-python-sdk, Helm v4 embedded).

usage: helm_chart.py render CHART_DIR VALUES_JSON RELEASE NAMESPACE   -> manifests on stdout
       helm_chart.py lint CHART_DIR VALUES_JSON                       -> lint report (JSON)
Exit status 1 with the error on stderr when Helm refuses.
"""
import json
import sys

import helm_python as helm


def main():
    command, chart_dir, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    try:
        if command == "render":
            chart = helm.Chart.load(chart_dir)
            rendered = chart.render(values, name=sys.argv[4], namespace=sys.argv[5], is_install=True)
            for path in sorted(rendered):
                text = rendered[path].strip()
                if text and not path.endswith("NOTES.txt"):
                    print(f"---\n# Source: {path}\n{text}")
        elif command == "lint":
            print(json.dumps(helm.lint(chart_dir, values, strict=True, kube_version="v1.30.0")))
        else:
            raise SystemExit(f"unknown command {command}")
    except helm.HelmError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
