"""Reading a multipart form as `Request.form()` does, except that a text field whose bytes are not text
in the form's charset (UTF-8 unless its Content-Type names another) is refused: Starlette would read it
as latin-1, so a job would store text nobody sent ("\\xff\\xfe" became "ÿþ"), where the JSON body of the
same request is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request


class UndecodableField(MultiPartException):
    """A text field that is not valid text in the form's charset."""

    def __init__(self, name: str, charset: str) -> None:
        super().__init__(f"{name} is not valid {charset} text")
        self.name = name
        self.charset = charset


class _TextCheckingParser(MultiPartParser):
    # A field's raw bytes are only seen inside the parser, on its part (an attribute Starlette keeps
    # private, like the charset): tests/api/test_edits.py shows when that changes.
    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode(self._charset)
            except UnicodeDecodeError:
                raise UndecodableField(part.field_name, self._charset) from None
        super().on_part_end()


@asynccontextmanager
async def read_form(request: Request, max_files: int, max_fields: int) -> AsyncIterator[FormData]:
    """The form, its spooled files closed on exit. Raises `MultiPartException` (`UndecodableField`)
    for a body that cannot be read as a form."""
    async with aclosing(request.stream()) as stream:
        parser = _TextCheckingParser(request.headers, stream, max_files=max_files, max_fields=max_fields)
        form = await parser.parse()
    try:
        yield form
    finally:
        await form.close()
