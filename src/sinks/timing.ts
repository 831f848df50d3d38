/**
 * Waiting with a way out: the queue's sends give up after the request timeout, and both sends
 * and backoff pauses end at once when the stop deadline aborts them.
 */
import { TransientError } from "./destination.ts";

/** The stop deadline ended the wait. */
export class Aborted extends Error {
  override name = "Aborted";
}

/** Runs `p` until it settles; rejects with TransientError after `timeoutMs`, Aborted on `signal`. */
export function raceTimeout<T>(p: Promise<T>, timeoutMs: number, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) return reject(new Aborted());
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Aborted());
    };
    signal.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      reject(new TransientError(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    p.then((v) => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      resolve(v);
    }, (e) => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      reject(e);
    });
  });
}

/** Waits `ms`; false when `signal` aborted first. */
export function sleepUnless(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
