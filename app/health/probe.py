"""HTTP probe for healthchecks: `python -m health.probe URL`; exit 0 only on a 2xx answer."""

import argparse
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:  # noqa: S310
            print(f"{args.url}: {response.status}")
            return 0
    except urllib.error.HTTPError as exc:
        print(
            f"{args.url}: HTTP {exc.code} {exc.read(500).decode(errors='replace')}", file=sys.stderr
        )
    except (OSError, ValueError) as exc:
        print(f"{args.url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
