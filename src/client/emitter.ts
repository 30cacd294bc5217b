/** A minimal typed event emitter that runs the same in browsers and Node. */
export class Emitter<Events extends Record<string, (...args: any[]) => void>> {
  private readonly handlers = new Map<keyof Events, Set<Events[keyof Events]>>()

  /** Add a handler; returns a function that removes it. */
  on<K extends keyof Events> (event: K, handler: Events[K]): () => void {
    let set = this.handlers.get(event)
    if (set === undefined) {
      set = new Set()
      this.handlers.set(event, set)
    }
    set.add(handler)
    return () => this.off(event, handler)
  }

  off<K extends keyof Events> (event: K, handler: Events[K]): void {
    this.handlers.get(event)?.delete(handler)
  }

  /** Whether an event still goes to the handlers left to call: a subclass stops an event one of them ended. */
  protected receiving (_event: keyof Events): boolean {
    return true
  }

  protected emit<K extends keyof Events> (event: K, ...args: Parameters<Events[K]>): void {
    const set = this.handlers.get(event)
    if (set === undefined) return
    for (const handler of [...set]) {
      if (!this.receiving(event)) return
      try {
        handler(...args)
      } catch (err) {
        // A failing app handler must not break delivery to the others, nor the client.
        setTimeout(() => { throw err })
      }
    }
  }
}
