/**
 * How the core asks an Authorizer about a subscription, whether or not it knows about
 * per-message checks.
 */
import type { Authorizer, ClientContext, SubscribeAccess } from "./types.ts";

/** 0 refused, 1 granted, 2 granted with a check per message; everything is granted without one. */
export function subscribeAccess(
  authorizer: Authorizer | null,
  ctx: ClientContext,
  filter: string,
): SubscribeAccess {
  if (authorizer === null) return 1;
  if (authorizer.subscribeAccess !== undefined) return authorizer.subscribeAccess(ctx, filter);
  return authorizer.canSubscribe(ctx, filter) ? 1 : 0;
}
