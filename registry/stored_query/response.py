"""query:AdhocQueryResponse bytes: stored fragments spliced in as they are (pure).

The stored ebRIM fragments are complete elements declaring their own namespaces, so the
LeafClass answer is their concatenation inside RegistryObjectList: no parsing, no re-serialising.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from lxml import etree

from ihe.errors import RegistryError, build_error_list, response_status
from ihe.namespaces import QUERY, RIM, RS
from registry.stored_query.sql import ResultObject

_OPEN = f'<query:AdhocQueryResponse xmlns:query="{QUERY}" xmlns:rim="{RIM}" xmlns:rs="{RS}" status='


def adhoc_query_response(
    objects: Sequence[ResultObject] = (),
    *,
    leaf_class: bool = True,
    home: str | None = None,
    errors: Sequence[RegistryError] = (),
) -> bytes:
    """The response body. With any error (not warning) the status is Failure and no object is sent.

    ObjectRef answers carry ``home`` when given; LeafClass answers carry the stored fragments,
    each given ``home`` on its root element when it has none of its own.
    """
    status = response_status(errors)
    failed = any(e.is_error for e in errors)
    parts = [_OPEN.encode(), quoteattr(status).encode(), b">"]
    error_list = build_error_list(errors)
    if error_list is not None:
        parts.append(etree.tostring(error_list))
    if failed or not objects:
        parts.append(b"<rim:RegistryObjectList/>")
    else:
        parts.append(b"<rim:RegistryObjectList>")
        if leaf_class:
            home_attr = f" home={quoteattr(home)}" if home else ""
            parts.extend(with_home(o.ebrim, home_attr).encode() for o in objects if o.ebrim is not None)
        else:
            home_attr = f" home={quoteattr(home)}" if home else ""
            parts.extend(f'<rim:ObjectRef id="{o.id}"{home_attr}/>'.encode() for o in objects)
        parts.append(b"</rim:RegistryObjectList>")
    parts.append(b"</query:AdhocQueryResponse>")
    return b"".join(parts)


def with_home(fragment: str, home_attr: str) -> str:
    """``fragment`` with ``home_attr`` (`` home="..."``) added to its root start tag unless it has a home.

    A string splice: attribute values in a serialized start tag never hold a raw ``>``.
    """
    if not home_attr:
        return fragment
    end = fragment.find(">")
    if end < 0 or " home=" in fragment[:end]:
        return fragment
    if fragment[end - 1] == "/":
        end -= 1
    return f"{fragment[:end]}{home_attr}{fragment[end:]}"
