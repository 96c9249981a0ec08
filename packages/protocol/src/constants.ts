/** IOTMP message types (spec §3.3). 0 is reserved and never sent. */
export const MessageType = {
  OK: 0x01,
  ERROR: 0x02,
  CONNECT: 0x03,
  DISCONNECT: 0x04,
  KEEP_ALIVE: 0x05,
  RUN: 0x06,
  DESCRIBE: 0x07,
  START_STREAM: 0x08,
  STOP_STREAM: 0x09,
  STREAM_DATA: 0x0a,
} as const;

export type MessageType = (typeof MessageType)[keyof typeof MessageType];

const typeNames: Record<number, string> = Object.fromEntries(
  Object.entries(MessageType).map(([name, code]) => [code, name]),
);

/** The name of a message type code ("RUN"), or "TYPE_<n>" for codes IOTMP does not define. */
export function messageTypeName(type: number): string {
  return typeNames[type] ?? `TYPE_${type}`;
}

export function isMessageType(type: number): type is MessageType {
  return type >= MessageType.OK && type <= MessageType.STREAM_DATA;
}

/** Field ids common to all messages (spec §3.4). */
export const FieldId = {
  STREAM_ID: 1,
  PARAMETERS: 2,
  PAYLOAD: 3,
  RESOURCE: 4,
} as const;

export type FieldId = (typeof FieldId)[keyof typeof FieldId];

/** Field wire types: 0 varint, 1 legacy PSON (protocol version 0), 2 PSON (protocol version 1). */
export const WireType = {
  VARINT: 0,
  LEGACY_PSON: 1,
  PSON: 2,
} as const;

export type WireType = (typeof WireType)[keyof typeof WireType];

/** Protocol version: 1 = new PSON in wire type 2, 0 = legacy PSON in wire type 1 (spec §4). */
export type ProtocolVersion = 0 | 1;

/** Default maximum frame body accepted (the reference Linux client's limit). */
export const DEFAULT_MAX_FRAME_SIZE = 256 * 1024;

/** Top-level varints (header and field values) are limited to 32 bits, as in the references. */
export const MAX_FIELD_VARINT = 0xffff_ffff;

/** Stream ids are 16-bit; 0 means "no stream id". */
export const MAX_STREAM_ID = 0xffff;
