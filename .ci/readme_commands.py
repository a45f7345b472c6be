"""Print the README's first two shell commands (the install-and-run one, then the test one), one per line."""

import re
from pathlib import Path

text = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text(encoding="utf-8")
blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.S)
commands = [" ".join(line.strip() for line in block.strip().splitlines()) for block in blocks[:2]]
assert len(commands) == 2, "README.md must open with two ```sh blocks: install+run, then tests"
print("\n".join(commands))
