"""China's implicit AIGC label (GB 45438-2025, TC260 practice guide): where files carry it and what it says.

Since 2025-09-01 Chinese generation services (Doubao, Jimeng, Kling, Qwen, Hunyuan, ...) must write an implicit
label into the file metadata. GB 45438-2025 Annex E (normative) fixes the payload: a JSON object, carried by a
metadata field whose name contains "AIGC", with these elements (all strings):

* ``Label``: "1" the content IS AI-generated/synthesised (属于), "2" it MAY be (可能为), "3" it is SUSPECTED
  to be (疑似为);
* ``ContentProducer``: name or code of the generation service provider; ``ProduceID``: its ID of this content;
* ``ContentPropagator`` / ``PropagateID``: the distributing platform and its ID of the content;
* ``ReservedCode1`` / ``ReservedCode2``: reserved for the producer's / propagator's integrity codes (opaque).

The TC260 practice guide (TC260-PG-20258A, image metadata) puts it in XMP as the property ``AIGC`` in the
namespace ``http://www.tc260.org.cn/ns/AIGC/1.0/`` (any prefix, element or attribute form) whose value is that
JSON; files also carry it as a PNG text chunk keyed ``AIGC`` (HunyuanImage-3.0's README sample in
``../shared/data/modern-web-samples`` does) and as JSON in EXIF ``UserComment``. Some writers wrap the object
as ``{"AIGC": {...}}``; both forms are read. Sources: GB 45438-2025 Annex E; TC260-PG-20258A.

Only Label "1" is a hard claim; "2" and "3" are the producer's own doubt and stay weak evidence.
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from models.provenance_container import find_xmp_packet

TC260_NS = "http://www.tc260.org.cn/ns/AIGC/1.0/"
FIELDS = ("Label", "ContentProducer", "ProduceID", "ReservedCode1", "ContentPropagator", "PropagateID", "ReservedCode2")
LABEL_MEANING = {"1": "AI-generated", "2": "possibly AI-generated", "3": "suspected AI-generated"}
VALUE_LIMIT = 16 * 1024  # a real label is a few hundred bytes; longer values are cut before JSON parsing
MAX_LABELS = 8


def parse_label(text: str, where: str) -> dict[str, Any] | None:
    """One label from its JSON text (bare or wrapped in ``{"AIGC": ...}``); None when it is not one."""
    text = html.unescape(text.strip())[:VALUE_LIMIT]
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {"where": where, "error": "AIGC value is not valid JSON", "label": None}
    if isinstance(data, dict) and isinstance(data.get("AIGC"), dict):
        data = data["AIGC"]
    if not isinstance(data, dict) or "Label" not in data:
        return None
    fields = {name: str(data[name])[:200] for name in FIELDS if isinstance(data.get(name), (str, int))}
    label = fields.get("Label", "").strip()
    return {
        "where": where,
        "label": label,
        "meaning": LABEL_MEANING.get(label, "unknown label value"),
        "producer": fields.get("ContentProducer") or None,
        "produce_id": fields.get("ProduceID") or None,
        "propagator": fields.get("ContentPropagator") or None,
        "propagate_id": fields.get("PropagateID") or None,
    }


def find_labels(
    xmp_packets: list[tuple[str, bytes]], text: dict[str, str], text_where: dict[str, str], user_comment: str | None
) -> list[dict[str, Any]]:
    """Every AIGC label in the XMP packets, the ``AIGC`` text chunk and EXIF UserComment of one file."""
    found: list[dict[str, Any]] = []
    for where, packet in xmp_packets:
        for value in _xmp_values(packet):
            label = parse_label(value, f"{where} (TC260 AIGC)")
            if label:
                found.append(label)
    if "AIGC" in text:
        label = parse_label(text["AIGC"], f"{text_where.get('AIGC', 'text')} AIGC")
        if label:
            found.append(label)
    if user_comment and "Label" in user_comment:
        label = parse_label(user_comment, "EXIF UserComment")
        if label:
            found.append(label)
    return found[:MAX_LABELS]


def _xmp_values(packet: bytes) -> list[str]:
    """Values of the TC260 ``AIGC`` property, element or attribute form, under any prefix."""
    if TC260_NS.encode() not in packet:
        return []
    tag = f"{{{TC260_NS}}}AIGC"
    if b"<!DOCTYPE" not in packet and b"<!ENTITY" not in packet:  # never expand entities (see parse_xmp)
        try:
            document = find_xmp_packet(packet)
            root = ET.fromstring(document if document is not None else packet.strip(b"\x00 \r\n\t"))
        except ET.ParseError:
            root = None
        if root is not None:
            values = [el.text or "" for el in root.iter(tag)]
            values += [el.attrib[tag] for el in root.iter() if tag in el.attrib]
            return [v for v in values if v.strip()]
    # Not XML: the prefix bound to the namespace, then its AIGC property (bounded, linear patterns).
    text = packet.decode("utf-8", "replace")
    prefixes = re.findall(r"xmlns:([\w.-]{1,40})\s*=\s*[\"']" + re.escape(TC260_NS), text)
    values = []
    for prefix in prefixes[:4]:
        pattern = rf"{re.escape(prefix)}:AIGC\s*(?:=\s*\"([^\"]{{0,{VALUE_LIMIT}}})\"|>([^<]{{0,{VALUE_LIMIT}}})<)"
        values += [m.group(1) or m.group(2) or "" for m in re.finditer(pattern, text)]
    return values
