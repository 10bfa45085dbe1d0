"""What a file's own metadata says about the tool that made it.

Parsers for the text that generators write next to the pixels: AUTOMATIC1111 ``parameters`` (PNG text, EXIF
UserComment, stealth alpha/RGB LSBs), ComfyUI ``prompt``/``workflow`` JSON, InvokeAI (``Dream``,
``invokeai_metadata``, ``sd-metadata``), NovelAI (``Software``/``Comment``), Fooocus (``parameters`` JSON with
``fooocus_scheme``), SwarmUI (``sui_image_params``), the DALL-E 2 EXIF tags, Midjourney's ``Job ID``
description, and XMP / IPTC declarations (``Iptc4xmpExt:DigitalSourceType``, ``xmp:CreatorTool``, the AI credits
of Google and Apple in IPTC Credit). Each parser returns a :class:`GeneratorFinding` with the fields it could read
(generator, model, seed, steps, sampler, cfg, prompt) or ``None``.

Every declared marker read here, its exact form and where that form is published or was seen in a real file is
listed in ``docs/provenance_markers.md``; a marker whose exact form could not be found is not read.

Everything here reads text that :mod:`models.provenance_container` already cut at its size limit; JSON is
parsed only up to :data:`JSON_LIMIT` characters and a nesting too deep for ``json`` is reported, not raised.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.provenance_container import TEXT_LIMIT, ContainerMetadata, find_xmp_packet
from models.provenance_exif import ExifData, decode_user_comment

JSON_LIMIT = TEXT_LIMIT
PROMPT_CHARS = 2000  # prompts are cut to this length in the report
# IPTC Digital Source Type, every spelling that is published (see docs/provenance_markers.md):
# - the concept IRI, http://cv.iptc.org/newscodes/digitalsourcetype/<code>: the scheme URI and concept IDs on
#   https://cv.iptc.org/newscodes/digitalsourcetype/ ; the C2PA actions of the shared c2pa files carry it;
# - the same IRI over https: IPTC's own ExifTool guide writes https://cv.iptc.org/newscodes/digitalsourcetype/
#   trainedAlgorithmicMedia, and a real Midjourney PNG carries that form (picteus/picteus @ 07b2a53b,
#   extensions/instances/midjourney/src/main.test.ts, metadata read from a Midjourney download of 2024-06-20);
# - the QCode digsrctype:<code>: the vocabulary's "Concept ID (QCode)" with scheme alias "digsrctype"
#   (cv.iptc.org/newscodes/digitalsourcetype, "prefSchemeAlias": "digsrctype" in its JSON-LD);
# - the bare code (what ExifTool writes for -XMP-iptcExt:DigitalSourceType=trainedAlgorithmicMedia): read only
#   when it is one of IPTC_SOURCE_CODES, so free text never passes for a declaration.
# IPTC-IIM has no Digital Source Type dataset (the property is IPTC Extension, XMP only; ExifTool's IIM
# application record, lib/Image/ExifTool/IPTC.pm, has no such tag), so there is no IIM spelling to read.
IPTC_SOURCE_TYPES = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/",
    "https://cv.iptc.org/newscodes/digitalsourcetype/",
)
IPTC_SOURCE_QCODE = "digsrctype:"
# IPTC digital source types that declare generative AI. "algorithmicMedia" (made by a non-learned
# algorithm, e.g. fractals) is recorded but is not an AI claim.
AI_SOURCE_TYPES = {"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"}
ALGORITHMIC_SOURCE_TYPES = AI_SOURCE_TYPES | {"algorithmicMedia"}
# The IPTC Digital Source Type vocabulary (cv.iptc.org/newscodes/digitalsourcetype, release 2024-10-23): its 20
# concepts, the retired minorHumanEdits, softwareImage and digitalArt included ("acceptable in legacy content").
IPTC_SOURCE_CODES = ALGORITHMIC_SOURCE_TYPES | {
    "digitalCapture",
    "computationalCapture",
    "negativeFilm",
    "positiveFilm",
    "print",
    "humanEdits",
    "compositeCapture",
    "algorithmicallyEnhanced",
    "digitalCreation",
    "dataDrivenMedia",
    "screenCapture",
    "virtualRecording",
    "composite",
    "compositeSynthetic",
    "minorHumanEdits",
    "softwareImage",
    "digitalArt",
}

# IPTC Credit Line values that declare generative AI, with what they declare. Read in XMP photoshop:Credit and
# in IPTC-IIM 2:110 Credit, case-insensitively, as a phrase inside the credit.
AI_CREDITS: dict[str, tuple[str, str]] = {
    # Google's generative AI images (existing marker; Google writes it to the IIM Credit).
    "made with google ai": ("generated", "Google generative AI"),
    # Google Photos, images edited with Magic Editor / Magic Eraser / Zoom Enhance: "Credit: Edited with Google AI"
    # next to "Digital source type: Edited using Generative AI" (Google, "More transparency for AI edits in Google
    # Photos", blog.google, October 2024; the labels as quoted by fonearena.com/blog/438871).
    "edited with google ai": ("ai_edited", "Google Photos (Magic Editor / Magic Eraser)"),
    # Apple Photos Clean Up (iOS 18.1, macOS 15.1): an "Apple Photos Clean Up" label in the photo's Credit field
    # (reported from iOS 18.1 beta 3, Aug 2024, e.g. lifebuzznews.com/news/3170534137672006623; Photos shows it as
    # "Modified with Clean Up"). Clean Up removes objects and fills the hole with a generative model.
    "apple photos clean up": ("ai_edited", "Apple Photos Clean Up"),
}


@dataclass
class GeneratorFinding:
    """One piece of generator metadata: which tool, where it was found, and the parameters it carries."""

    tool: str  # the software that wrote the metadata: "AUTOMATIC1111", "ComfyUI", "OpenAI DALL-E 2", ...
    where: str  # "PNG tEXt parameters", "EXIF UserComment", "stealth pnginfo, alpha LSB (...)", ...
    model: str | None = None
    seed: int | str | None = None
    steps: int | None = None
    sampler: str | None = None
    cfg: float | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}


# ---- software names -------------------------------------------------------------------------------------
# Matched case-insensitively against Software / CreatorTool / ProcessingSoftware values.
GENERATOR_SOFTWARE = re.compile(
    r"\b(novelai|stable[ _-]?diffusion|automatic1111|comfyui|invokeai|fooocus|swarmui|midjourney|dall[·\-\s]?e|"
    r"openai|adobe firefly|imagen|gemini|nano banana|leonardo\.?ai|ideogram|dreamstudio|nightcafe|"
    r"draw things|diffusionbee|craiyon|bing image creator|image creator from designer|flux\.1|grok|"
    r"made with google ai)\b",
    re.IGNORECASE,
)
EDITOR_SOFTWARE = re.compile(
    r"photoshop|lightroom|adobe bridge|camera raw|gimp|paint\.net|paintshop|affinity|capture one|dxo|"
    r"acd ?see|acd systems|picasa|snapseed|pixelmator|darktable|rawtherapee|luminar|canva|imagemagick|"
    r"graphicsmagick|irfanview|xnview|windows photo|microsoft photo|photos \d|ipho?to|aperture|preview|"
    r"quicktime|fireworks|corel|photoscape|photodirector|facetune|vsco|instagram|pmb|camedia master|"
    r"olympus master|finepix viewer|nikon transfer|view ?nx|capture nx|digital photo professional|"
    r"zoombrowser|lab system|mac os x|libvips|pillow|python|exiftool|jhead|photomatix",
    re.IGNORECASE,
)
# Camera and phone firmware that names itself ("HDR+ 1.0.x" on Pixels, "MediaTek Camera Application").
FIRMWARE_SOFTWARE = re.compile(r"hdr\+|\bcamera\b|firmware|\bfw\b", re.IGNORECASE)


def software_class(value: str, make: str | None, model: str | None) -> str:
    """Classify a Software / CreatorTool string: "generator", "editor", "firmware" or "other"."""
    text = value.strip()
    if GENERATOR_SOFTWARE.search(text):
        return "generator"
    if EDITOR_SOFTWARE.search(text):
        return "editor"
    if FIRMWARE_SOFTWARE.search(text):
        return "firmware"
    lowered = text.lower()
    names = [n.lower() for n in (make, model) if n]
    if any(name and (name in lowered or lowered in name) for name in names):
        return "firmware"  # "Digital Camera FinePix40i Ver1.39", "NIKON Z 9 Ver.T2.10.gb"
    # Camera firmware strings are short version tags: "Ver.1.0", "v981-79", "E885v1.0", "fw 05.15 prm 07.53",
    # "34-1036", "16.5" (iOS), "G930FXXU1DQJ8" (Android build). They carry digits and few words.
    if len(text) <= 32 and re.search(r"\d", text) and len(text.split()) <= 4 and not re.search(r"[a-z]{9,}", lowered):
        return "firmware"
    return "other"


# ---- XMP ------------------------------------------------------------------------------------------------
@dataclass
class XmpInfo:
    """The XMP properties that matter for provenance, from all packets of a file."""

    digital_source_types: list[str] = field(default_factory=list)
    creator_tools: list[str] = field(default_factory=list)
    credits: list[str] = field(default_factory=list)
    history_agents: list[str] = field(default_factory=list)  # xmpMM:History softwareAgent values
    # Iptc4xmpExt:DigImageGUID: Midjourney writes its Job ID here (the picteus test file named above).
    dig_image_guids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


XMP_PROPERTIES = {
    "DigitalSourceType": "digital_source_types",
    "CreatorTool": "creator_tools",
    "Credit": "credits",
    "softwareAgent": "history_agents",
    "DigImageGUID": "dig_image_guids",
}
RDF_RESOURCE = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource"


def parse_xmp(packets: list[tuple[str, bytes]]) -> XmpInfo:
    """Read XMP packets defensively: no DTDs (so no entity expansion), and a regex when it is not XML."""
    info = XmpInfo()
    for where, packet in packets:
        packet = packet[:TEXT_LIMIT]
        if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:
            # XMP never needs a DTD; refusing one is what keeps entity expansion ("billion laughs") out.
            info.errors.append(f"{where}: XMP packet declares a DTD; read with a pattern match instead of XML")
            _xmp_by_pattern(packet, info)
            continue
        try:
            root = ET.fromstring(_xmp_document(packet))
        except ET.ParseError as err:
            info.errors.append(f"{where}: XMP is not well-formed XML ({err}); read with a pattern match")
            _xmp_by_pattern(packet, info)
            continue
        for element in root.iter():
            text = (element.text or "").strip()
            # A property whose value is a URI may be written <ns:Name rdf:resource="..."/> (RDF/XML syntax,
            # W3C RDF 1.1 XML Syntax section 2.4): the same declaration as <ns:Name>...</ns:Name>.
            _xmp_property(_local(element.tag), text or element.attrib.get(RDF_RESOURCE, "").strip(), info)
            for name, value in element.attrib.items():
                _xmp_property(_local(name), value.strip(), info)
    return info


def _xmp_document(packet: bytes) -> bytes:
    """The ``x:xmpmeta`` element if there is one (drops padding and ``<?xpacket?>`` wrappers)."""
    inner = find_xmp_packet(packet)
    return inner if inner is not None else packet.strip(b"\x00 \r\n\t")


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def _xmp_property(name: str, value: str, info: XmpInfo) -> None:
    target = XMP_PROPERTIES.get(name)
    if target and value:
        values = getattr(info, target)
        if value not in values and len(values) < 32:
            values.append(value[:300])


def _xmp_by_pattern(packet: bytes, info: XmpInfo) -> None:
    text = packet.decode("utf-8", "replace")
    for name in XMP_PROPERTIES:
        # Attribute form  ns:Name="value"  or element form  <ns:Name>value</ns:Name>. The pattern starts
        # with a literal and bounds the value, so it stays linear on hostile input.
        for match in re.finditer(
            rf":{name}\s*(?:=\s*[\"']([^\"'<>]{{0,300}})[\"']|>([^<>]{{0,300}})<|"
            rf"\s+rdf:resource\s*=\s*[\"']([^\"'<>]{{0,300}})[\"'])",
            text,
        ):
            _xmp_property(name, (match.group(1) or match.group(2) or match.group(3) or "").strip(), info)


def source_type_code(value: str) -> str | None:
    """``trainedAlgorithmicMedia`` from its IPTC IRI (http or https), its QCode or the bare code; None otherwise."""
    value = value.strip()
    for prefix in (*IPTC_SOURCE_TYPES, IPTC_SOURCE_QCODE):
        if value.startswith(prefix):
            value = value[len(prefix) :].strip("/")
            break
    return value if value in IPTC_SOURCE_CODES else None  # a code outside the vocabulary is no declaration


def ai_credit(credit: str) -> tuple[str, str] | None:
    """(kind, who) when an IPTC Credit value is one of the published AI credits, else None."""
    lowered = credit.lower()
    return next((AI_CREDITS[phrase] for phrase in AI_CREDITS if phrase in lowered), None)


# ---- IPTC IIM (JPEG APP13) ------------------------------------------------------------------------------
def iptc_credits(blocks: list[tuple[str, bytes]]) -> list[str]:
    """The IPTC IIM Credit (2:110) values in Photoshop image resource blocks (Google writes its AI credit here).

    Credit is the only IIM dataset read: IIM has none for Digital Source Type (see IPTC_SOURCE_TYPES).
    """
    credits: list[str] = []
    for _, block in blocks:
        for resource in _photoshop_resources(block):
            credits += _iim_records(resource, dataset=110)
    return credits


def _photoshop_resources(block: bytes) -> list[bytes]:
    """Image resource 0x0404 (IPTC-NAA) payloads of a Photoshop IRB block."""
    out, pos = [], 0
    while pos + 12 <= len(block) and len(out) < 16 and block[pos : pos + 4] == b"8BIM":
        resource_id = int.from_bytes(block[pos + 4 : pos + 6], "big")
        name_len = block[pos + 6]
        name_end = pos + 7 + name_len + ((name_len + 1) % 2)  # Pascal string padded to even length
        size = int.from_bytes(block[name_end : name_end + 4], "big")
        start = name_end + 4
        if start + size > len(block):
            break
        if resource_id == 0x0404:
            out.append(block[start : start + size])
        pos = start + size + (size % 2)
    return out


def _iim_records(data: bytes, dataset: int) -> list[str]:
    values, pos = [], 0
    while pos + 5 <= len(data) and data[pos] == 0x1C and len(values) < 16:
        record, number, size = data[pos + 1], data[pos + 2], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if size & 0x8000:  # extended-length dataset: not used by the fields read here
            break
        if record == 2 and number == dataset:
            values.append(data[pos + 5 : pos + 5 + size].decode("utf-8", "replace").strip())
        pos += 5 + size
    return values


# ---- generator metadata ---------------------------------------------------------------------------------
def find_generator_metadata(meta: ContainerMetadata, exif: ExifData | None) -> list[GeneratorFinding]:
    """Every generator-metadata finding in the text chunks and EXIF of one file."""
    findings: list[GeneratorFinding] = []
    text, where = meta.text, meta.text_where
    if "parameters" in text:
        finding = parse_parameters(
            text["parameters"], f"{where['parameters']} parameters", fooocus_scheme=text.get("fooocus_scheme")
        )
        if finding:
            findings.append(finding)
    if "comment" in text:  # JPEG COM: some front-ends write AUTOMATIC1111 parameters there
        finding = parse_a1111(text["comment"], "JPEG COM")
        if finding:
            findings.append(finding)
    if "prompt" in text or "workflow" in text:
        finding = parse_comfyui(text.get("prompt"), text.get("workflow"), where.get("prompt") or where["workflow"])
        if finding:
            findings.append(finding)
    for key in ("invokeai_metadata", "sd-metadata", "Dream"):
        if key in text:
            finding = parse_invokeai(key, text[key], f"{where[key]} {key}")
            if finding:
                findings.append(finding)
                break  # the three carry the same generation; the first readable one is enough
    # NovelAI's generation metadata is its Comment JSON (seed, steps, sampler, ...) beside Software = NovelAI; the
    # Software chunk alone is a free-text name, strong evidence only (see software_class).
    if text.get("Software", "").strip().lower().startswith("novelai") and _novelai_settings(text):
        findings.append(parse_novelai(text, where["Software"]))
    if text.get("Description"):
        midjourney = parse_midjourney(text["Description"], f"{where['Description']} Description")
    else:
        midjourney = parse_midjourney(exif.text("ImageDescription") if exif else None, "EXIF ImageDescription")
    if midjourney:
        findings.append(midjourney)
    if exif is not None:
        findings += parse_exif_generators(exif)
    return findings


def parse_parameters(text: str, where: str, fooocus_scheme: str | None = None) -> GeneratorFinding | None:
    """A ``parameters`` text: AUTOMATIC1111 style (also Forge, SD.Next, Fooocus "a1111" scheme) or JSON."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = load_json(stripped)
        if not isinstance(data, dict):
            return None
        if fooocus_scheme is not None or str(data.get("version", "")).lower().startswith("fooocus"):
            return _fooocus(data, where)
        if "sui_image_params" in data:
            return _swarmui(data, where)
        return None
    return parse_a1111(stripped, where)


def parse_a1111(text: str, where: str) -> GeneratorFinding | None:
    """``prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, ...``."""
    lines = text.strip().split("\n")
    settings_index = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].lstrip().startswith("Steps:")), None)
    if settings_index is None:
        return None
    settings = _a1111_settings(lines[settings_index])
    if not {"Sampler", "Seed", "CFG scale"} & set(settings):
        return None  # a "Steps:" line alone is not AUTOMATIC1111's format
    head = "\n".join(lines[:settings_index])
    prompt, _, negative = head.partition("\nNegative prompt:")
    if head.startswith("Negative prompt:"):
        prompt, negative = "", head[len("Negative prompt:") :]
    version = settings.get("Version", "")
    tool = "Fooocus" if "fooocus" in version.lower() else "AUTOMATIC1111"
    extra = {
        k: settings[k]
        for k in ("Size", "Model hash", "Version", "Schedule type", "Denoising strength")
        if k in settings
    }
    return GeneratorFinding(
        tool=tool,
        where=where,
        model=settings.get("Model"),
        seed=_int(settings.get("Seed")),
        steps=_int(settings.get("Steps")),
        sampler=settings.get("Sampler"),
        cfg=_float(settings.get("CFG scale")),
        prompt=_cut(prompt.strip()),
        negative_prompt=_cut(negative.strip()),
        extra=extra,
    )


def _a1111_settings(line: str) -> dict[str, str]:
    """``Key: value, Key: "quoted, value", ...`` in one linear pass (a regex here can go quadratic)."""
    settings: dict[str, str] = {}
    pos = 0
    while pos < len(line) and len(settings) < 200:
        colon = line.find(":", pos)
        if colon < 0:
            break
        key, start = line[pos:colon].strip(), colon + 1
        while start < len(line) and line[start] == " ":
            start += 1
        if line.startswith('"', start):  # quoted values may contain commas; \" escapes a quote
            end = start + 1
            while end < len(line) and line[end] != '"':
                end += 2 if line[end] == "\\" else 1
            value, comma = line[start + 1 : end], line.find(",", end)
        else:
            comma = line.find(",", start)
            value = line[start : comma if comma >= 0 else len(line)]
        settings[key] = value.strip()
        pos = comma + 1 if comma >= 0 else len(line)
    return settings


def _fooocus(data: dict, where: str) -> GeneratorFinding:
    return GeneratorFinding(
        tool="Fooocus",
        where=where,
        model=_str(data.get("base_model")),
        seed=_int(data.get("seed")),
        steps=_int(data.get("steps")),
        sampler=_str(data.get("sampler")),
        cfg=_float(data.get("guidance_scale")),
        prompt=_cut(_str(data.get("prompt"))),
        negative_prompt=_cut(_str(data.get("negative_prompt"))),
        extra={
            k: data[k]
            for k in ("version", "performance", "resolution", "scheduler", "refiner_model")
            if isinstance(data.get(k), (str, int, float))
        },
    )


def _swarmui(data: dict, where: str) -> GeneratorFinding:
    params = data.get("sui_image_params") if isinstance(data.get("sui_image_params"), dict) else {}
    return GeneratorFinding(
        tool="SwarmUI",
        where=where,
        model=_str(params.get("model")),
        seed=_int(params.get("seed")),
        steps=_int(params.get("steps")),
        sampler=_str(params.get("sampler")),
        cfg=_float(params.get("cfgscale")),
        prompt=_cut(_str(params.get("prompt"))),
        negative_prompt=_cut(_str(params.get("negativeprompt"))),
    )


# ComfyUI node inputs that name model files, most specific first.
COMFY_MODEL_INPUTS = ("ckpt_name", "unet_name", "model_name", "model_path")
COMFY_FILE = re.compile(r"\.(safetensors|ckpt|pt|pth|gguf|sft|bin)$", re.IGNORECASE)


def parse_comfyui(prompt_json: str | None, workflow_json: str | None, where: str) -> GeneratorFinding | None:
    """ComfyUI API graph (``prompt``): sampler settings, model files and the positive prompt text."""
    graph = load_json(prompt_json) if prompt_json else None
    if not isinstance(graph, dict):
        workflow = load_json(workflow_json) if workflow_json else None
        if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
            # Only the UI graph is readable: the tool is certain, the parameters are not resolved.
            return GeneratorFinding(
                tool="ComfyUI",
                where=f"{where} workflow",
                extra={"nodes": len(workflow["nodes"]), "note": "prompt graph unreadable"},
            )
        if '"class_type"' in (prompt_json or "") or '"last_node_id"' in (workflow_json or ""):
            # A ComfyUI graph too large (cut at the text limit) or broken to parse: the tool is still certain.
            return GeneratorFinding(tool="ComfyUI", where=where, extra={"note": "graph JSON unreadable or truncated"})
        return None
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}
    if not nodes or not any("class_type" in v for v in nodes.values()):
        return None
    model_files = []
    for node in nodes.values():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and COMFY_FILE.search(value) and value not in model_files:
                if name in COMFY_MODEL_INPUTS or name.endswith("_name"):
                    model_files.append(value)
    main_models = [
        node["inputs"][k]
        for node in nodes.values()
        for k in COMFY_MODEL_INPUTS
        if isinstance(node["inputs"].get(k), str)
    ]
    sampler = next(
        (
            node
            for node in nodes.values()
            if "Sampler" in str(node.get("class_type", ""))
            and any(k in node["inputs"] for k in ("seed", "noise_seed", "steps", "noise", "sigmas"))
        ),
        None,
    )
    finding = GeneratorFinding(
        tool="ComfyUI",
        where=f"{where} prompt",
        model=main_models[0] if main_models else (model_files[0] if model_files else None),
        extra={"model_files": model_files[:10], "nodes": len(nodes)},
    )
    if sampler is not None:
        finding.seed = _int(_comfy_value(nodes, sampler, ("seed", "noise_seed"), via=("noise",)))
        finding.steps = _int(_comfy_value(nodes, sampler, ("steps",), via=("sigmas",)))
        finding.cfg = _float(_comfy_value(nodes, sampler, ("cfg",), via=("guider",)))
        finding.sampler = _str(_comfy_value(nodes, sampler, ("sampler_name",), via=("sampler",)))
        finding.prompt = _cut(_comfy_prompt(nodes, sampler))
        finding.extra["sampler_node"] = sampler.get("class_type")
    return finding


def _comfy_value(nodes: dict, node: dict, names: tuple[str, ...], via: tuple[str, ...]) -> Any:
    """A literal input of ``node``; or the same input of the node linked through one of ``via``."""
    for name in names:
        value = node["inputs"].get(name)
        if not isinstance(value, list):
            if value is not None:
                return value
        else:
            linked = _linked(nodes, value)
            if linked is not None:
                for candidate in names + ("value",):
                    if candidate in linked["inputs"] and not isinstance(linked["inputs"][candidate], list):
                        return linked["inputs"][candidate]
    for link_name in via:
        linked = _linked(nodes, node["inputs"].get(link_name))
        if linked is not None:
            for name in names:
                value = linked["inputs"].get(name)
                if value is not None and not isinstance(value, list):
                    return value
    return None


def _linked(nodes: dict, link: Any) -> dict | None:
    if isinstance(link, list) and link and str(link[0]) in nodes:
        return nodes[str(link[0])]
    return None


def _comfy_prompt(nodes: dict, sampler: dict) -> str | None:
    """Follow the sampler's ``positive`` (or guider's conditioning) back to the first text input."""
    start = sampler["inputs"].get("positive")
    if start is None:
        guider = _linked(nodes, sampler["inputs"].get("guider"))
        start = guider["inputs"].get("positive", guider["inputs"].get("conditioning")) if guider else None
    queue, seen = [start], set()
    while queue and len(seen) < 50:
        node = _linked(nodes, queue.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for key in ("text", "text_g", "t5xxl", "clip_l", "prompt"):
            value = node["inputs"].get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        queue += [v for v in node["inputs"].values() if isinstance(v, list)]
    return None


DREAM_FLAGS = {"-s": "steps", "-S": "seed", "-C": "cfg", "-A": "sampler", "-W": "width", "-H": "height", "-m": "model"}


def parse_invokeai(key: str, text: str, where: str) -> GeneratorFinding | None:
    """InvokeAI's three formats: ``invokeai_metadata`` (3.x+ JSON), ``sd-metadata`` (2.x JSON), ``Dream``."""
    if key == "Dream":
        match = re.match(r'\s*"(.*)"\s*(.*)$', text, re.DOTALL)
        if not match:
            return None
        prompt, flags = match.groups()
        tokens = flags.split()
        values = {DREAM_FLAGS[t]: tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in DREAM_FLAGS}
        return GeneratorFinding(
            tool="InvokeAI",
            where=where,
            model=values.get("model"),
            seed=_int(values.get("seed")),
            steps=_int(values.get("steps")),
            sampler=values.get("sampler"),
            cfg=_float(values.get("cfg")),
            prompt=_cut(prompt),
        )
    data = load_json(text)
    if not isinstance(data, dict):
        return None
    if key == "sd-metadata":
        image = data.get("image") if isinstance(data.get("image"), dict) else {}
        prompt = image.get("prompt")
        if isinstance(prompt, list):
            prompt = " ".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
        return GeneratorFinding(
            tool="InvokeAI",
            where=where,
            model=_str(data.get("model_weights")),
            seed=_int(image.get("seed")),
            steps=_int(image.get("steps")),
            sampler=_str(image.get("sampler")),
            cfg=_float(image.get("cfg_scale")),
            prompt=_cut(_str(prompt)),
            extra={"app_version": _str(data.get("app_version"))},
        )
    model = data.get("model")
    model_name = model.get("model_name") or model.get("name") if isinstance(model, dict) else model
    return GeneratorFinding(
        tool="InvokeAI",
        where=where,
        model=_str(model_name),
        seed=_int(data.get("seed")),
        steps=_int(data.get("steps")),
        sampler=_str(data.get("scheduler")),
        cfg=_float(data.get("cfg_scale")),
        prompt=_cut(_str(data.get("positive_prompt"))),
        negative_prompt=_cut(_str(data.get("negative_prompt"))),
        extra={"generation_mode": _str(data.get("generation_mode"))},
    )


def _novelai_settings(text: dict[str, str]) -> dict[str, Any]:
    """NovelAI's ``Comment`` JSON object, or {} when it is absent or not a JSON object."""
    comment = load_json(text.get("Comment", "")) if text.get("Comment", "").strip().startswith("{") else None
    return comment if isinstance(comment, dict) else {}


def parse_novelai(text: dict[str, str], where: str) -> GeneratorFinding:
    """NovelAI: ``Software`` = NovelAI, ``Source`` names the model, ``Comment`` is JSON with the settings."""
    comment = _novelai_settings(text)
    return GeneratorFinding(
        tool="NovelAI",
        where=f"{where} Software/Source/Comment",
        model=_str(text.get("Source")),
        seed=_int(comment.get("seed")),
        steps=_int(comment.get("steps")),
        sampler=_str(comment.get("sampler")),
        cfg=_float(comment.get("scale")),
        prompt=_cut(_str(comment.get("prompt")) or text.get("Description")),
        negative_prompt=_cut(_str(comment.get("uc"))),
    )


def parse_midjourney(description: str | None, where: str = "Description") -> GeneratorFinding | None:
    """Midjourney writes ``<prompt> --v 6 Job ID: <uuid>`` into the Description (PNG tEXt, next to ``Author`` and
    ``Creation Time``, and the same Job ID as XMP ``iptcExt:DigImageGUID``: picteus/picteus @ 07b2a53b,
    extensions/instances/midjourney/src/main.test.ts, metadata of a real Midjourney PNG)."""
    if not description:
        return None
    match = re.search(r"Job ID:\s*([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", description)
    if not match:
        return None
    version = re.search(r"--(?:v|version|niji)\s+([\w.]+)", description)
    return GeneratorFinding(
        tool="Midjourney",
        where=where,
        prompt=_cut(description[: match.start()].strip()),
        model=f"Midjourney v{version.group(1)}" if version else None,
        extra={"job_id": match.group(1)},
    )


def parse_exif_generators(exif: ExifData) -> list[GeneratorFinding]:
    """Generator traces in EXIF: DALL-E 2 tags, and A1111-style parameters in UserComment (JPEG/WebP)."""
    findings = []
    maker_note, comment = exif.get("MakerNote"), decode_user_comment(exif.get("UserComment"))
    note_text = (
        maker_note
        if isinstance(maker_note, str)
        else (maker_note[:200].decode("latin-1") if isinstance(maker_note, bytes) else "")
    )
    if note_text.startswith("OpenAI--ImageGeneration--") or (comment and "Made with OpenAI Labs" in comment):
        generation = note_text.split("--")[-1] if note_text.startswith("OpenAI--") else None
        findings.append(
            GeneratorFinding(
                tool="OpenAI DALL-E 2",
                where="EXIF MakerNote/UserComment",
                extra={"generation_id": generation, "user_comment": comment},
            )
        )
    elif comment and "Steps:" in comment:
        finding = parse_a1111(comment, "EXIF UserComment")
        if finding:
            findings.append(finding)
    return findings


# ---- stealth pnginfo ------------------------------------------------------------------------------------
STEALTH_SIGNATURES = {
    "stealth_pnginfo": ("alpha", False),
    "stealth_pngcomp": ("alpha", True),
    "stealth_rgbinfo": ("rgb", False),
    "stealth_rgbcomp": ("rgb", True),
}
STEALTH_MAX_BITS = 8 * TEXT_LIMIT


def read_stealth_pnginfo(data: bytes, has_alpha: bool, rgb: np.ndarray) -> tuple[str, str] | None:
    """(where, text) of AUTOMATIC1111 "stealth pnginfo" hidden in the least significant bits, or None.

    The extension writes the bits column by column (x outer, y inner): 120 bits of signature, 32 bits of
    payload length in bits, then the payload (gzip for the ``*comp`` signatures). The alpha variant needs
    the alpha channel, which :class:`DecodedImage` drops (it composites on white), so for a PNG with alpha
    the original bytes are opened once more with Pillow here: that reads the container's pixels as stored,
    it is not a second decoding path for the pixel detectors.
    """
    if has_alpha:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
        found = _stealth_bits(alpha.T.reshape(-1) & 1, "alpha")
        if found:
            return found
    # The RGB variant hides 3 bits per pixel (r, g, b) in the same column-major order.
    return _stealth_bits(rgb.transpose(1, 0, 2).reshape(-1) & 1, "rgb")


def _stealth_bits(bits: np.ndarray, mode: str) -> tuple[str, str] | None:
    if bits.size < 152:
        return None
    signature = np.packbits(bits[:120].astype(np.uint8)).tobytes().decode("latin-1")
    if signature not in STEALTH_SIGNATURES or STEALTH_SIGNATURES[signature][0] != mode:
        return None
    length = int.from_bytes(np.packbits(bits[120:152].astype(np.uint8)).tobytes(), "big")
    length = min(length, STEALTH_MAX_BITS, bits.size - 152)
    payload = np.packbits(bits[152 : 152 + length].astype(np.uint8)).tobytes()
    where = f"stealth pnginfo, {mode} LSB ({signature})"
    if STEALTH_SIGNATURES[signature][1]:
        try:
            payload = _gunzip_bounded(payload)
        except (OSError, EOFError, zlib.error) as err:
            return where, f"<unreadable payload: {type(err).__name__}>"
    return where, payload.decode("utf-8", "replace")


def _gunzip_bounded(blob: bytes) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(blob)) as handle:
        return handle.read(TEXT_LIMIT)


# ---- small helpers --------------------------------------------------------------------------------------
def load_json(text: str | None) -> Any:
    """``json.loads`` of at most JSON_LIMIT characters; None for invalid, truncated or too-deep JSON."""
    if not text or len(text) > JSON_LIMIT:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if abs(number) < 2**64 else None  # seeds reach 2**64 - 1 in some tools


def _float(value: Any) -> float | None:
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) < 1e9 else None


def _str(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:500]
    return None


def _cut(text: str | None) -> str | None:
    if not text:
        return None
    return text if len(text) <= PROMPT_CHARS else text[:PROMPT_CHARS] + "..."
