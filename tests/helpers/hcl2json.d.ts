// The part of @cdktf/hcl2json that the tests use. Its own declarations start with
// `/// <reference lib="dom" />`, which would change the global types of every file type-checked
// with them (CI checks all test files as one program).
/** HCL text to the JSON form Terraform's `hcl2json` gives; rejects on a syntax error. */
export function parse(filename: string, contents: string): Promise<Record<string, unknown>>;
