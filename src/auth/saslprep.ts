/**
 * SASLprep (RFC 4013), the "Normalize" of SCRAM (RFC 5802 section 2.2): the profile's tables
 * (Unicode 3.2, RFC 3454) come from `@mongodb-js/saslprep`, the one MongoDB's drivers prepare SCRAM
 * passwords with. This wrapper tells stored strings from queries, names why a string is refused,
 * and answers a string that prepares to nothing (the package fails on it with a TypeError).
 *
 * The package is imported by the first string that is not printable ASCII, not with the broker:
 * unpacking its tables costs ~2 MiB of heap and ~6 MiB of RSS (measured after a full GC), which a
 * broker that never sees such a password must not carry (tests/ops/footprint_test.ts holds an
 * idle node under 8 MiB of heap; loaded eagerly, it measured 9.2).
 *
 * It runs on the event loop (PBKDF2 does not), so its cost is bounded by {@link MAX_PREPARED}:
 * NFKC reorders a run of combining marks in quadratic time, and 32,000 of them in descending
 * classes (a 64 KiB MQTT password) held every client of the broker for 0.56 s per login.
 */
type Prepare = (input: string, opts?: { allowUnassigned?: boolean }) => string;

let loading: Promise<Prepare> | undefined;

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

/**
 * The longest string (UTF-16 code units) that is prepared; a longer one that is not printable
 * ASCII is refused (SaslprepError), so a login checks it as its bytes and `passwd` refuses it.
 * Ample for a password, and its worst case (combining marks, U+FDFA's 18-fold expansion) costs
 * ~2 ms of the event loop.
 */
export const MAX_PREPARED = 1024;

function load(): Promise<Prepare> {
  loading ??= import("@mongodb-js/saslprep").then((m) => m.default);
  return loading;
}

/** Raised when SASLprep refuses a string; the message says which character and why. */
export class SaslprepError extends Error {
  override name = "SaslprepError";
}

/**
 * "stored": a string kept for later comparison (a password `passwd` writes), where unassigned
 * code points are refused; "query": one compared against it (a password at login), where they
 * are allowed (RFC 3454 section 7).
 */
export type SaslprepUse = "stored" | "query";

/**
 * `text` prepared by SASLprep: non-ASCII spaces mapped to SPACE, "commonly mapped to nothing"
 * characters (U+00AD, U+200B...) removed, NFKC, then prohibited characters and the bidi rules
 * checked. Rejects with SaslprepError when the profile refuses `text`, or when it is longer than
 * {@link MAX_PREPARED} and not printable ASCII. May return "" (only
 * characters mapped to nothing): RFC 4013 allows it, so a caller that cannot use it refuses it.
 */
export async function saslprep(text: string, use: SaslprepUse): Promise<string> {
  // Printable ASCII is left as it is (nothing in it is mapped, normalized or prohibited): most
  // passwords, which then need not load the tables at all.
  if (PRINTABLE_ASCII.test(text)) return text;
  if (text.length > MAX_PREPARED) {
    throw new SaslprepError(
      `it is longer than ${MAX_PREPARED} characters and not printable ASCII alone (SASLprep's ` +
        "normalization is bounded to that length)",
    );
  }
  const prepare = await load();
  const allowUnassigned = use === "query";
  try {
    return prepare(text, { allowUnassigned });
  } catch (error) {
    if (error instanceof TypeError && emptyAfterMapping(prepare, text, allowUnassigned)) return "";
    throw new SaslprepError(reasonOf(prepare, text, error, allowUnassigned));
  }
}

/**
 * Whether `text` maps to nothing: the package reads the first character of its result without
 * checking there is one. A leading "a" gives it one, and leaves the rest of the check alone.
 */
function emptyAfterMapping(prepare: Prepare, text: string, allowUnassigned: boolean): boolean {
  try {
    return prepare(`a${text}`, { allowUnassigned }) === "a";
  } catch {
    return false;
  }
}

/**
 * Why `text` was refused, naming the character: the package's message says which rule failed but
 * not where, so the characters are tried one by one (each alone fails the same rule as in the
 * string, as prohibition and assignment are properties of one code point).
 */
function reasonOf(
  prepare: Prepare,
  text: string,
  error: unknown,
  allowUnassigned: boolean,
): string {
  const message = error instanceof Error ? error.message : String(error);
  const failsAlone = (rule: string) =>
    [...text].find((c) => {
      try {
        prepare(c, { allowUnassigned });
        return false;
      } catch (e) {
        return e instanceof Error && e.message.startsWith(rule);
      }
    });
  if (message.startsWith("Prohibited character")) {
    const c = failsAlone("Prohibited character");
    return c === undefined
      ? "it contains a character SASLprep prohibits (RFC 4013 section 2.3)"
      : `it contains ${codePoint(c)}, ${kindOf(c)} that SASLprep prohibits (RFC 4013 section 2.3)`;
  }
  if (message.startsWith("Unassigned code point")) {
    const c = failsAlone("Unassigned code point");
    return `it contains ${
      c === undefined ? "a code point" : codePoint(c)
    } unassigned in Unicode 3.2, which SASLprep refuses in stored strings (RFC 4013 section 2.5)`;
  }
  if (message.startsWith("String must not contain RandALCat and LCat")) {
    return "it mixes right-to-left and left-to-right characters (RFC 3454 section 6)";
  }
  if (message.startsWith("Bidirectional RandALCat")) {
    return "right-to-left text must start and end with a right-to-left character " +
      "(RFC 3454 section 6)";
  }
  return `SASLprep refuses it: ${message}`;
}

function codePoint(c: string): string {
  return `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
}

/** A word on what kind of character `c` is, for the message (RFC 3454's tables C.2-C.9). */
function kindOf(c: string): string {
  if (/\p{Cc}/u.test(c)) return "a control character";
  if (/\p{Co}/u.test(c)) return "a private-use character";
  if (/\p{Cs}/u.test(c)) return "a lone surrogate";
  if (/\p{Noncharacter_Code_Point}/u.test(c)) return "a non-character";
  return "a format, tagging or display-changing character";
}
