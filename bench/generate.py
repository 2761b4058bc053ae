#!/usr/bin/python3
"""Inputs for bench/run, made at run time so nothing generated lives in the repository.

  generate.py migrations COUNT FOLDER
      COUNT migrations named <version>_<description>.sql, a name both opsplan and
      sqlx-cli accept. They cycle through what a real schema history holds: create a
      table, add a column to it, index it, insert rows into it. The SQL is plain enough
      for SQLite and PostgreSQL alike.

  generate.py rules COUNT CORPUS FOLDER
      Prometheus rule files holding exactly COUNT rules, copied from the real rule files
      in CORPUS (*.yml) as many times as needed. Each copy renames its groups and rules, so
      no two groups or alerts share a name. The last group is cut short to hit COUNT.

  generate.py summary RESULTS
      Reads the JSON that bench/run leaves in RESULTS, prints the ratio table and writes
      it to RESULTS/summary.md.
"""

import glob
import json
import os
import statistics
import sys


def migrations(count, folder):
    os.makedirs(folder, exist_ok=True)
    width = max(5, len(str(count)))
    table = None
    for version in range(1, count + 1):
        step = (version - 1) % 4
        if step == 0:
            table = f"account_{version:0{width}d}"
            name = f"create_{table}"
            sql = (
                f"CREATE TABLE {table} (\n"
                "    id BIGINT PRIMARY KEY,\n"
                "    email TEXT NOT NULL,\n"
                "    display_name TEXT,\n"
                "    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n"
                ");\n"
            )
        elif step == 1:
            name = f"add_{table}_last_login"
            sql = (
                f"ALTER TABLE {table} ADD COLUMN last_login TIMESTAMP;\n"
                f"ALTER TABLE {table} ADD COLUMN login_count INTEGER NOT NULL DEFAULT 0;\n"
            )
        elif step == 2:
            name = f"index_{table}_email"
            sql = (
                f"CREATE UNIQUE INDEX {table}_email ON {table} (email);\n"
                f"CREATE INDEX {table}_last_login ON {table} (last_login);\n"
            )
        else:
            name = f"seed_{table}"
            rows = ",\n".join(
                f"    ({row}, 'user{row}@example.com', 'User {row}', {row % 7})"
                for row in range(1, 21)
            )
            sql = (
                f"INSERT INTO {table} (id, email, display_name, login_count) VALUES\n"
                f"{rows};\n"
            )
        path = os.path.join(folder, f"{version:0{width}d}_{name}.sql")
        with open(path, "w") as file:
            file.write(sql)


def rules(count, corpus, folder):
    import yaml

    sources = []
    for path in sorted(glob.glob(os.path.join(corpus, "*.yml"))):
        with open(path) as file:
            document = yaml.safe_load(file)
        groups = [g for g in document.get("groups") or [] if g.get("rules")]
        if groups:
            sources.append((os.path.splitext(os.path.basename(path))[0], groups))
    if not sources:
        sys.exit(f"generate.py: no rule files with rules in {corpus}")

    os.makedirs(folder, exist_ok=True)
    left = count
    copy = 0
    while left > 0:
        copy += 1
        for stem, groups in sources:
            if left == 0:
                break
            renamed = []
            for group in groups:
                if left == 0:
                    break
                group = dict(group)
                group["name"] = f"{group['name']}_copy{copy}"
                kept = []
                for rule in group["rules"][:left]:
                    rule = dict(rule)
                    if "alert" in rule:
                        rule["alert"] = f"{rule['alert']}Copy{copy}"
                    else:
                        rule["record"] = f"{rule['record']}:copy{copy}"
                    kept.append(rule)
                group["rules"] = kept
                left -= len(kept)
                renamed.append(group)
            path = os.path.join(folder, f"copy{copy}_{stem}.yml")
            with open(path, "w") as file:
                yaml.safe_dump({"groups": renamed}, file, sort_keys=False, width=1000,
                               allow_unicode=True)


def load(results, name):
    path = os.path.join(results, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def by_name(hyperfine):
    """Each command's figures, its median time as `seconds`: one slow run on a shared
    machine moves a mean, not a median."""
    runs = {}
    for result in hyperfine["results"]:
        runs[result["command"]] = dict(result, seconds=result["median"])
    return runs


def summary(results):
    rows = []

    def row(benchmark, what, ratio, target, detail):
        if target is None:
            verdict = "(no target)"
        else:
            verdict = "met" if ratio <= target else "missed"
            target = f"<= {target:.2f}x"
        rows.append((benchmark, what, f"{ratio:.2f}x", target or "", verdict, detail))

    apply = load(results, "apply")
    if apply:
        runs = by_name(apply)
        ops, sqlx, session = runs["opsplan apply"], runs["sqlx migrate run"], runs["psql session"]
        row("apply", "opsplan / psql session", ops["seconds"] / session["seconds"], 1.03,
            f"{ops['seconds']:.2f} s vs {session['seconds']:.2f} s")
        if "times" in ops and len(ops["times"]) == len(session["times"]):
            # Each round ran both within seconds of each other: the ratio of a round is
            # the least exposed to the machine's load drifting between rounds.
            paired = statistics.median(a / b for a, b in zip(ops["times"], session["times"]))
            row("apply", "opsplan / psql session, median of rounds", paired, 1.03,
                f"{len(ops['times'])} rounds")
        row("apply", "opsplan / sqlx migrate run", ops["seconds"] / sqlx["seconds"], None,
            f"{ops['seconds']:.2f} s vs {sqlx['seconds']:.2f} s")
        ops_cpu = ops["user"] + ops["system"]
        sqlx_cpu = sqlx["user"] + sqlx["system"]
        row("apply", "client CPU, opsplan / sqlx-cli", ops_cpu / sqlx_cpu, 1.0,
            f"{ops_cpu:.3f} s vs {sqlx_cpu:.3f} s user+sys")

    noop = load(results, "noop-plan")
    if noop:
        runs = by_name(noop)
        ops, sqlx = runs["opsplan plan"], runs["sqlx migrate info"]
        row("noop-plan", "opsplan plan / sqlx migrate info", ops["seconds"] / sqlx["seconds"], 1.0,
            f"{ops['seconds'] * 1000:.1f} ms vs {sqlx['seconds'] * 1000:.1f} ms")

    slow = load(results, "slow-backends")
    if slow:
        runs = by_name(slow)
        plan = runs["opsplan plan, all four"]["seconds"]
        singles = {k: v["seconds"] for k, v in runs.items() if k.startswith("read alone: ")}
        total = sum(singles.values())
        slowest_name = max(singles, key=singles.get)
        slowest = singles[slowest_name]
        row("slow-backends", "plan / sum of the four reads", plan / total, None,
            f"{plan:.3f} s vs {total:.3f} s")
        row("slow-backends", "plan / slowest single read", plan / slowest, 1.3,
            f"{plan:.3f} s vs {slowest:.3f} s ({slowest_name[len('read alone: '):]})")

    validate = load(results, "validate")
    if validate:
        runs = by_name(validate)
        ops, promtool = runs["opsplan validate"], runs["promtool check rules"]
        row("validate", "opsplan validate / promtool check rules",
            ops["seconds"] / promtool["seconds"], 0.5,
            f"{ops['seconds'] * 1000:.1f} ms vs {promtool['seconds'] * 1000:.1f} ms")

    scaling = load(results, "scaling")
    if scaling:
        for state in ("pending", "applied"):
            small = scaling[f"1000 {state}"]
            large = scaling[f"10000 {state}"]
            row("scaling", f"plan time, 10,000 / 1,000 {state}",
                large["seconds"] / small["seconds"], None,
                f"{large['seconds'] * 1000:.0f} ms vs {small['seconds'] * 1000:.0f} ms")
            row("scaling", f"peak RSS, 10,000 / 1,000 {state}",
                large["max_rss_kib"] / small["max_rss_kib"], None,
                f"{large['max_rss_kib'] / 1024:.1f} MiB vs {small['max_rss_kib'] / 1024:.1f} MiB")

    header = ("benchmark", "ratio", "measured", "target", "verdict", "figures")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for benchmark, what, ratio, target, verdict, detail in rows:
        lines.append(f"| {benchmark} | {what} | {ratio} | {target} | {verdict} | {detail} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(results, "summary.md"), "w") as file:
        file.write("# Ratios of the last run of each benchmark\n\nMedian times; CPU figures are means.\n\n" + text)
    print(text, end="")


def main(argv):
    if len(argv) == 4 and argv[1] == "migrations":
        migrations(int(argv[2]), argv[3])
    elif len(argv) == 5 and argv[1] == "rules":
        rules(int(argv[2]), argv[3], argv[4])
    elif len(argv) == 3 and argv[1] == "summary":
        summary(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
