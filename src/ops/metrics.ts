/**
 * Counters the core increments. Plain fields, no locking or labels: they are
 * bumped on the hot path and read by the metrics endpoint and $SYS.
 */
export class Metrics {
  connectionsAccepted = 0;
  connectionsCurrent = 0;
  connectsRefused = 0;
  protocolErrors = 0;
  publishReceived = 0;
  publishSent = 0;
  bytesReceived = 0;
  /** QoS 0 messages dropped because the subscriber was offline or not keeping up. */
  droppedQos0 = 0;
  /** QoS 1/2 messages dropped because a session queue was full. */
  droppedQueueFull = 0;
  /** Messages dropped because they exceeded the receiver's Maximum Packet Size. */
  droppedTooLarge = 0;
  /** Messages dropped because their Message Expiry Interval ran out. */
  droppedExpired = 0;
  sessionsExpired = 0;
  willsPublished = 0;
  /** Retained PUBLISHes refused (MQTT 5, PUBACK 0x97) because the retained store was full. */
  retainedRefused = 0;
  /** SUBSCRIBE filters refused with 0x97 because the client was at its subscription limits. */
  subscriptionsRefused = 0;
}
