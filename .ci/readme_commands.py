"""Print the first N ```bash blocks of a README section, one command per line (CI runs them)."""
import re
import sys

path, section, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(path).read()
m = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.S | re.M)
if not m:
    sys.exit(f"{path}: no '## {section}' section")
blocks = re.findall(r"```bash\n(.*?)```", m.group(1), re.S)[:n]
for b in blocks:
    lines = b.strip().splitlines()
    if any(not line.rstrip().endswith("\\") for line in lines[:-1]):
        sys.exit(f"{path}: a set-up block holds several commands; CI runs one command per block")
    print(" ".join(line.rstrip().rstrip("\\").strip() for line in lines))
