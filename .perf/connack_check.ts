import mqttPacket from "mqtt-packet";
import { encodeConnack } from "../src/protocol/control.ts";
const props = { sessionExpiryInterval: 30, receiveMaximum: 32, retainAvailable: true, maximumPacketSize: 1048576, assignedClientIdentifier: "abc", topicAliasMaximum: 10, reasonString: "hello", wildcardSubscriptionAvailable: true, subscriptionIdentifiersAvailable: true, sharedSubscriptionAvailable: true, serverKeepAlive: 20 };
const ours = encodeConnack(5, true, 0x86, props);
const ref = mqttPacket.generate({ cmd: "connack", sessionPresent: true, reasonCode: 0x86, properties: props } as any, { protocolVersion: 5 });
console.log(Buffer.from(ours).equals(ref), Buffer.from(encodeConnack(4, true, 0)).equals(mqttPacket.generate({cmd:"connack", sessionPresent:true, returnCode:0} as any, {protocolVersion:4})));
console.log(Buffer.from(ours).toString("hex")); console.log(ref.toString("hex"));
