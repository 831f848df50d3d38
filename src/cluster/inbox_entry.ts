/**
 * The stream entries of forwarded records: what one entry holds for one destination's inbox
 * (`Pending`: the records' encoded headers and bodies, their message ids and retained versions),
 * the XADD fields it is written as (codec.ts has the batch's wire form), and the parts of an entry
 * the inbox writer writes again or keeps when Redis did not answer (`kept`, `retainedFields`).
 * Apart from inbox_writer.ts because none of it touches Redis or the writer's lanes: it only
 * builds entries, and the writer decides when and how often they are sent.
 */
import { Buffer } from "node:buffer";
import { encodeIds } from "./codec.ts";

/** An entry is closed and another started past this size. */
export const MAX_ENTRY_BYTES = 1 << 20;

export interface Pending {
  parts: Uint8Array[];
  /** The records' cluster-wide message ids ("" for none). */
  ids: string[];
  /** The records' retained versions ("" for none); null while no record has one. */
  versions: string[] | null;
  bytes: number;
  count: number;
}

/** The first byte of every entry: the batch's version (codec.ts). */
export const VERSION_BYTE = new Uint8Array([1]);

/**
 * The records of `p` a receiver keeps once however often they arrive (those with a message id:
 * QoS 1/2 and retained ones), as a new entry; null when there are none. Other QoS 0 records are
 * left out: sent again they could arrive twice, and QoS 0 is at most once.
 */
export function kept(p: Pending): Pending | null {
  const ids = p.ids;
  let n = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] !== "") n++;
  if (n === 0) return null;
  if (n === p.count) return p;
  const out: Pending = { parts: [VERSION_BYTE], ids: [], versions: null, bytes: 1, count: 0 };
  for (let i = 0; i < p.count; i++) {
    if (p.ids[i] === "") continue;
    const version = p.versions?.[i] ?? "";
    const header = p.parts[1 + 2 * i], body = p.parts[2 + 2 * i];
    out.parts.push(header, body);
    if (version !== "" && out.versions === null) out.versions = out.ids.map(() => "");
    out.versions?.push(version);
    out.ids.push(p.ids[i]);
    out.bytes += header.length + body.length + p.ids[i].length + 1;
    out.count++;
  }
  return out;
}

/**
 * The fields of the retained records of `p` (those with a version) and their count; `fields`
 * (p's own) when every record is one, null when none is.
 */
export function retainedFields(
  p: Pending,
  fields: (string | Buffer)[],
): { fields: (string | Buffer)[]; count: number } | null {
  const versions = p.versions;
  if (versions === null) return null;
  let n = 0;
  for (const v of versions) if (v !== "") n++;
  if (n === 0) return null;
  if (n === p.count) return { fields, count: n };
  const kept: string[] = [];
  const out: Pending = { parts: [VERSION_BYTE], ids: [], versions: kept, bytes: 1, count: 0 };
  for (let i = 0; i < p.count; i++) {
    const version = versions[i];
    if (version === "") continue;
    const header = p.parts[1 + 2 * i], body = p.parts[2 + 2 * i];
    out.parts.push(header, body);
    kept.push(version);
    out.ids.push(p.ids[i]);
    out.bytes += header.length + body.length + p.ids[i].length + 1;
    out.count++;
  }
  return { fields: entryFields(out), count: out.count };
}

/** The fields of one stream entry of forwarded messages (`v` only when a record has a version). */
export function entryFields(p: Pending): (string | Buffer)[] {
  const fields: (string | Buffer)[] = [
    "t",
    "m",
    "d",
    Buffer.concat(p.parts),
    "i",
    encodeIds(p.ids),
  ];
  if (p.versions !== null) fields.push("v", encodeIds(p.versions));
  return fields;
}
