"""Sans-IO IMAP wire codec: framing, parsing and serialising, with no I/O.

Bytes go in (``receive_data``), events come out (``next_event``); nothing here knows about
sockets, Trio, clocks or logging.  See :mod:`.decoder` for how the stream is framed and
:mod:`.conversation` for the state that links the two directions.
"""

from .conversation import Conversation, PendingCommand, Phase
from .decoder import Decoder, Hold
from .encoder import encode_command, encode_response, encode_string
from .errors import EncodeError, LimitExceeded, ParseError, ProtocolError, Side
from .events import (
    NEED_DATA,
    PAUSED,
    EndOfStream,
    Event,
    Frame,
    FrameKind,
    LiteralChunk,
    LiteralSpec,
    Wait,
)
from .limits import DEFAULT_LIMITS, Limits
from .mutf7 import MUTF7Error, decode_mutf7, encode_mutf7, is_valid_mutf7
from .parser import capabilities_of, parse_command, parse_frame, parse_response
from .secret import Secret
from .tokens import (
    NIL,
    Atom,
    AuthData,
    Command,
    ContinuationRequest,
    DataResponse,
    IdleDone,
    Literal,
    LiteralRef,
    Message,
    Nil,
    Number,
    ParenList,
    Quoted,
    Response,
    ResponseCode,
    SequenceSet,
    StatusResponse,
    Token,
    string_value,
)

__all__ = [
    "DEFAULT_LIMITS",
    "NEED_DATA",
    "NIL",
    "PAUSED",
    "Atom",
    "AuthData",
    "Command",
    "ContinuationRequest",
    "Conversation",
    "DataResponse",
    "Decoder",
    "EncodeError",
    "EndOfStream",
    "Event",
    "Frame",
    "FrameKind",
    "Hold",
    "IdleDone",
    "LimitExceeded",
    "Limits",
    "Literal",
    "LiteralChunk",
    "LiteralRef",
    "LiteralSpec",
    "MUTF7Error",
    "Message",
    "Nil",
    "Number",
    "ParenList",
    "ParseError",
    "PendingCommand",
    "Phase",
    "ProtocolError",
    "Quoted",
    "Response",
    "ResponseCode",
    "Secret",
    "SequenceSet",
    "Side",
    "StatusResponse",
    "Token",
    "Wait",
    "capabilities_of",
    "decode_mutf7",
    "encode_command",
    "encode_mutf7",
    "encode_response",
    "encode_string",
    "is_valid_mutf7",
    "parse_command",
    "parse_frame",
    "parse_response",
    "string_value",
]
