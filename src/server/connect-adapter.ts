import { Code, ConnectError, createConnectRouter } from "@connectrpc/connect";
import { universalRequestFromNodeRequest, universalResponseToNodeResponse, type ConnectNodeAdapterOptions } from "@connectrpc/connect-node";
import type { Logger } from "../log.js";
import type { Handler } from "./listener.js";
import { withProtocolReasons } from "./protocol-errors.js";

/**
 * connect-node's adapter (Connect, gRPC-Web, and gRPC for what the fast path
 * does not serve), as connectNodeAdapter builds it, but for two things: the
 * errors connect raises itself get their ErrorInfo reason (withProtocolReasons),
 * and a handler that fails to answer is logged as JSON, not to the console.
 */
export function connectAdapter(options: ConnectNodeAdapterOptions & { fallback: Handler }, logger: Logger): Handler {
  const router = createConnectRouter(options);
  options.routes(router);
  const handlers = new Map(router.handlers.map((handler) => [handler.requestPath, handler]));
  return (req, res) => {
    const handler = handlers.get(req.url?.split("?", 2)[0] ?? "");
    if (!handler) return options.fallback(req, res);
    const request = universalRequestFromNodeRequest(req, res, undefined, undefined);
    handler(request)
      .then(withProtocolReasons)
      .then((response) => universalResponseToNodeResponse(response, res))
      .catch((reason: unknown) => {
        if (ConnectError.from(reason).code === Code.Aborted) return;
        logger.error("handler failed to answer", { procedure: `${handler.service.typeName}/${handler.method.name}`, error: String(reason) });
      });
  };
}
