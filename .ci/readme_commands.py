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
    print(" ".join(line.rstrip("\\").strip() for line in b.strip().splitlines()))
