/** Stored session parts (src/store/types.ts) turned back into the objects the broker moves. */
import { utf8 } from "../protocol/bytes.ts";
import { Message } from "../protocol/message.ts";
import type { StoredMessage, StoredWill } from "../store/types.ts";
import type { Will } from "./session_types.ts";

/** A stored message as the router moves it. */
export function toMessage(m: StoredMessage): Message {
  if (m instanceof Message) return m;
  const msg = new Message(
    m.topic,
    utf8(m.topic),
    m.payload,
    m.qos,
    m.retain,
    m.props,
    m.expiresAt,
    m.origin,
  );
  if (m.id !== undefined) msg.id = m.id;
  return msg;
}

/** A stored will as the session keeps it. */
export function restoreWill(w: StoredWill): Will {
  return { msg: toMessage(w.msg), delay: w.delay, expiry: w.expiry };
}
