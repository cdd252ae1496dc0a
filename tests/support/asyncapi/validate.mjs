// Validates AsyncAPI documents with the official parser (@asyncapi/parser); one JSON line per diagnostic.
import { Parser } from '@asyncapi/parser';
import { readFileSync } from 'node:fs';

const parser = new Parser();
for (const file of process.argv.slice(2)) {
  const diagnostics = await parser.validate(readFileSync(file, 'utf8'));
  for (const d of diagnostics) {
    console.log(JSON.stringify({ file, severity: ['error', 'warning', 'info', 'hint'][d.severity], code: d.code,
                                 message: d.message, path: d.path.join('/') }));
  }
}
