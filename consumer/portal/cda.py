"""The human-readable part of an HL7 CDA R2 document, as HTML that is safe to show.

Only the narrative block's own elements are turned into HTML (a fixed map; every attribute but
table spans is dropped, links become plain text); all text is escaped. Anything else in the
document (entries, scripts someone slipped into a section) never reaches the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree
from markupsafe import Markup, escape

from ihe.xml import XMLRejected, parse_xml

V3 = "urn:hl7-org:v3"
_TAGS = {  # CDA narrative block element -> HTML element
    "paragraph": "p", "content": "span", "list": "ul", "item": "li", "table": "table", "thead": "thead",
    "tbody": "tbody", "tfoot": "tfoot", "tr": "tr", "th": "th", "td": "td", "caption": "caption", "sub": "sub",
    "sup": "sup", "linkHtml": "span", "footnote": "small", "footnoteRef": "small", "col": None, "colgroup": None,
    "renderMultiMedia": None,
}


class NotCDA(Exception):
    """The document is not a CDA document we can read."""


@dataclass(slots=True)
class Section:
    title: str
    html: Markup
    sections: list[Section] = field(default_factory=list)


@dataclass(slots=True)
class CdaDocument:
    title: str
    effective_time: str
    patient: str
    author: str
    sections: list[Section]


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _text(el: etree._Element | None) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def narrative_html(el: etree._Element) -> Markup:
    """The HTML of a narrative block (``section/text``) and what it contains."""
    parts: list[str] = [str(escape(el.text or ""))]
    for child in el:
        if isinstance(child.tag, str):
            name = _local(child) if child.tag.startswith("{" + V3 + "}") else ""
            if name == "br":
                parts.append("<br>")
            elif name in _TAGS and _TAGS[name] is not None:
                tag = _TAGS[name]
                if name == "list" and child.get("listType") == "ordered":
                    tag = "ol"
                attrs = "".join(f' {a}="{int(v)}"' for a in ("colspan", "rowspan")
                                if (v := child.get(a)) and v.isdigit() and name in ("td", "th"))
                parts.append(f"<{tag}{attrs}>{narrative_html(child)}</{tag}>")
            elif name not in _TAGS:  # unknown markup: keep its text only
                parts.append(str(escape(_text(child))))
        parts.append(str(escape(child.tail or "")))
    return Markup("".join(parts))


def _sections(parent: etree._Element) -> list[Section]:
    out = []
    for component in parent.iterfind(f"{{{V3}}}component"):
        section = component.find(f"{{{V3}}}section")
        if section is None:
            continue
        text = section.find(f"{{{V3}}}text")
        out.append(Section(_text(section.find(f"{{{V3}}}title")),
                           narrative_html(text) if text is not None else Markup(""), _sections(section)))
    return out


def _person_name(el: etree._Element | None) -> str:
    if el is None:
        return ""
    given = " ".join(_text(g) for g in el.iterfind(f"{{{V3}}}given"))
    family = " ".join(_text(f) for f in el.iterfind(f"{{{V3}}}family"))
    return " ".join(p for p in (given, family) if p) or _text(el)


def read_cda(data: bytes) -> CdaDocument:
    """Parse a CDA document (hardened XML parser) into its readable parts."""
    try:
        root = parse_xml(data)
    except XMLRejected as exc:
        raise NotCDA(f"the document is not readable XML: {exc.reason}") from None
    if root.tag != f"{{{V3}}}ClinicalDocument":
        raise NotCDA("the document is not an HL7 CDA ClinicalDocument")
    ns = {"v3": V3}
    body = root.find("v3:component/v3:structuredBody", ns)
    if body is not None:
        sections = _sections(body)
    else:
        text = root.find("v3:component/v3:nonXMLBody/v3:text", ns)
        sections = [Section("", Markup("<pre>") + escape(_text(text)) + Markup("</pre>"))] if text is not None else []
    effective = root.find("v3:effectiveTime", ns)
    return CdaDocument(
        title=_text(root.find("v3:title", ns)),
        effective_time=(effective.get("value") or "") if effective is not None else "",
        patient=_person_name(root.find("v3:recordTarget/v3:patientRole/v3:patient/v3:name", ns)),
        author=_person_name(root.find("v3:author/v3:assignedAuthor/v3:assignedPerson/v3:name", ns)),
        sections=sections,
    )
