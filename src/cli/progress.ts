/**
 * Progress display for long operations: a redrawn bar on a terminal, plain lines
 * (at most one per 10%) when stderr is a file or a pipe.
 */
export class Progress {
  private lastDecile = -1;
  private readonly tty = Boolean(process.stderr.isTTY);
  private readonly start = performance.now();
  private shown = false;

  constructor(private readonly label: string) {}

  update(done: number, total: number): void {
    const frac = total > 0 ? Math.min(1, done / total) : 1;
    if (this.tty) {
      const width = 30;
      const fill = Math.round(frac * width);
      process.stderr.write(`\r${this.label} [${'#'.repeat(fill)}${' '.repeat(width - fill)}] ${done}/${total}`);
      this.shown = true;
    } else {
      const decile = Math.floor(frac * 10);
      if (decile !== this.lastDecile) {
        this.lastDecile = decile;
        process.stderr.write(`${this.label}: ${Math.round(frac * 100)}% (${done}/${total})\n`);
      }
    }
  }

  done(): void {
    const s = ((performance.now() - this.start) / 1000).toFixed(1);
    if (this.tty && this.shown) process.stderr.write(`\r\x1b[K`);
    process.stderr.write(`${this.label}: done in ${s}s\n`);
  }
}
