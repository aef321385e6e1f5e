"""The results table every benchmark prints."""


def print_table(rows: list[tuple[str, object, str]]) -> None:
    width = max(len(label) for label, _, _ in rows)
    print(f"{'measure'.ljust(width)} | {'value':>10} | rate")
    print("-" * (width + 40))
    for label, value, rate in rows:
        print(f"{label.ljust(width)} | {str(value):>10} | {rate}")
