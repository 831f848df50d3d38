/** The states of a Connection, shared by the modules that run its flows. */
export const State = {
  AwaitingConnect: 0,
  /** CONNECT accepted so far; authentication or session attach is running. */
  Authenticating: 1,
  Connected: 2,
  Closed: 3,
} as const;
