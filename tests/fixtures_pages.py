"""Reads an examples page back (standard-library HTML parser) so tests can check what it shows."""

from html.parser import HTMLParser

FIELDS = ("label", "id", "ap", "mark", "score", "rank", "text", "noimage")


class _PageParser(HTMLParser):
    """Collects sections -> queries -> results, with the text of their labelled spans and their images."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections, self.images = [], []
        self._stack = []  # (tag, classes) of open elements
        self._field = None  # (target dict, field name) whose text is being read

    def _current(self):
        query = self.sections[-1]["queries"][-1] if self.sections and self.sections[-1]["queries"] else None
        if query is not None and query["results"] and query["results"][-1]["open"]:
            return query["results"][-1]
        return query["item"] if query is not None and query["open"] else None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if tag in ("br", "img", "meta"):
            if tag == "img":
                self.images.append(attrs)
                target = self._current()
                if target is not None:
                    target["images"].append(attrs)
            return
        self._stack.append((tag, classes))
        if "direction" in classes:
            self.sections.append({"title": "", "queries": []})
        elif tag == "h2" and self.sections:
            self._field = (self.sections[-1], "title")
        elif "query" in classes:
            self.sections[-1]["queries"].append({"classes": classes, "item": {"images": []}, "results": [],
                                                 "open": True})
        elif "result" in classes:
            self.sections[-1]["queries"][-1]["results"].append({"classes": classes, "images": [], "open": True})
        else:
            field = next((f for f in FIELDS if f in classes), None)
            target = self._current()
            if field and target is not None:
                target.setdefault(field, "")
                self._field = (target, field)

    def handle_endtag(self, tag):
        if not self._stack:
            return
        _, classes = self._stack.pop()
        self._field = None
        if "result" in classes:
            self.sections[-1]["queries"][-1]["results"][-1]["open"] = False
        elif "query-item" in classes:
            self.sections[-1]["queries"][-1]["open"] = False

    def handle_data(self, data):
        if self._field is not None:
            target, name = self._field
            target[name] = target.get(name, "") + data


def parse_examples_page(path) -> dict:
    """``{"sections": [{"title", "queries": [{"classes", "item": {...}, "results": [{...}]}]}], "images"}``.

    ``item`` and each result hold the text of their ``label``, ``id``, ``ap``, ``mark``, ``score``, ``text``
    and ``noimage`` elements (when present) and their ``images`` (attribute dicts of the ``<img>`` tags).
    """
    parser = _PageParser()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    return {"sections": parser.sections, "images": parser.images}
