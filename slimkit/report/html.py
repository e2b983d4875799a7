"""A self-contained HTML page from a markdown report (tables, headings, bullets) plus PNG images."""
import base64
import html
import re

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
          "th{background:#f3f3f3}td.num{text-align:right}code{background:#f6f6f6}img{max-width:100%}")


def _inline(text):
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(md):
    """The small markdown subset slimkit reports use: #-headings, pipe tables, '- ' bullets, paragraphs."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip().startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            head = "".join(f"<th>{_inline(c)}</th>" for c in _cells(line))
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append("<tr>" + "".join(
                    f"<td class='num'>{_inline(c)}</td>" if re.fullmatch(r"[-+]?[\d,.]+x?%?", c) else f"<td>{_inline(c)}</td>"
                    for c in _cells(lines[i])) + "</tr>")
                i += 1
            out.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
            continue
        elif line.strip().startswith("- "):
            out.append(f"<ul><li>{_inline(line.strip()[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def write_html(path, title, markdown, images=()):
    """Write ``markdown`` as HTML with the PNG files in ``images`` embedded (base64); returns ``path``."""
    imgs = []
    for img in images:
        with open(img, "rb") as f:
            imgs.append(f"<img alt='{html.escape(str(img))}' src='data:image/png;base64,{base64.b64encode(f.read()).decode()}'>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(imgs)}\n{markdown_to_html(markdown)}</body></html>")
    with open(path, "w") as f:
        f.write(page)
    return path
