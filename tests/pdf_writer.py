"""A minimal PDF writer for test documents: one page per list of lines, Helvetica, Latin-1 text.

Written by hand (the format is small) so that the tests need no PDF-making package; the knowledge base
reads these files with pypdf like any other PDF. ``python -m tests.pdf_writer`` rebuilds
tests/data/kb/shop/policies.pdf.
"""

from __future__ import annotations

from pathlib import Path


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: list[list[str]]) -> bytes:
    objects: list[bytes] = []
    n = len(pages)
    # 1: catalog, 2: page tree, 3: font, then a page and its content stream for each page
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 11 Tf", "14 TL", "56 780 Td"]
        for line in lines:
            ops += [f"({_escape(line)}) Tj", "T*"]
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R "
                       f">> >> /Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    Path(path).write_bytes(pdf_bytes(pages))
    return Path(path)


POLICIES = [
    ["Bluebell Bikes - Shop policies", "",
     "Returns: unused items can be returned within 30 days with the receipt.",
     "Refunds go back to the original payment method.", "",
     "Rentals: a deposit of $50 is required for each rental bike,",
     "and renters must show a photo ID."],
    ["Repair guarantee: all repairs are guaranteed for 90 days.",
     "If the same fault comes back within that time, we fix it free of charge."],
]

if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "data" / "kb" / "shop" / "policies.pdf"
    print(write_pdf(target, POLICIES))
