/**
 * How a connection ends on an error: an MQTT error (a protocol violation, a limit) gets its
 * reason code, in CONNACK before CONNECT was accepted (MQTT 5 only) or in DISCONNECT after, and
 * an info line; anything else is a bug or a throwing authenticator or authorizer, answered with
 * 0x83 and an error line. Either way only this connection pays for it. Bytes that are not MQTT at
 * all close it without a word.
 */
import { getLogger } from "@logtape/logtape";
import { hex } from "../ops/log.ts";
import { encodeConnack } from "../protocol/control.ts";
import { MqttError, ReasonCode } from "../protocol/reason_codes.ts";
import type { Connection } from "./connection.ts";
import { State } from "./connection_state.ts";

const log = getLogger(["mcloudtt", "connection"]);

/** Ends `c` after `e`. */
export function failConnection(c: Connection, e: unknown): void {
  if (c.state === State.Closed) return;
  let code: number = ReasonCode.UnspecifiedError;
  let message = "internal error";
  if (e instanceof MqttError) {
    c.host.metrics.protocolErrors++;
    code = e.code;
    message = e.message;
    log.info("closing {client_id} ({remote_address}): {problem} ({reason_code})", {
      client_id: c.clientId,
      remote_address: c.peer.remoteAddress,
      problem: message,
      reason_code: hex(code),
    });
  } else {
    // A bug or a throwing authenticator/authorizer: only this connection pays for it.
    c.host.metrics.internalErrors++;
    code = ReasonCode.ImplementationSpecificError;
    log.error("closing {client_id} ({remote_address}) after an internal error: {error}", {
      client_id: c.clientId,
      remote_address: c.peer.remoteAddress,
      error: e instanceof Error ? (e.stack ?? e.message) : String(e),
    });
  }
  if (c.state === State.AwaitingConnect || c.state === State.Authenticating) {
    // Errors in CONNECT are answered with CONNACK (MQTT 5 only) [MQTT-3.1.4-1].
    if (c.level === 5) {
      const props = c.clientMaxPacket < 0 ? {} : { reasonString: message };
      c.outbox.push(encodeConnack(5, false, code, props, c.clientMaxPacket));
    }
    c.end(false);
    return;
  }
  c.disconnect(code, message);
}

/**
 * The first byte of `c` cannot start a CONNECT (an HTTP request, a TLS hello, a port scan): no
 * answer is owed, and waiting for the length it claims would hold the connection for the whole
 * connect timeout. Cut it at once.
 */
export function notMqtt(c: Connection, byte: number): void {
  c.host.metrics.protocolErrors++;
  log.info("closing {addr}: not MQTT (first byte {byte})", {
    addr: c.peer.remoteAddress,
    byte: `0x${byte.toString(16).padStart(2, "0")}`,
  });
  c.closed();
}
